//! The resolver: local names → filter → cache/upstream → DNS64, served over UDP, TCP, DoT and DoH.

pub mod name;
pub mod upstream;
