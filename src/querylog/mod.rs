//! The opt-in query log, encrypted to the owner's age keys. (Being built: issue 4.)
