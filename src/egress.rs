//! NAT and firewall towards the internet (nftables). (Being built: see the hub work item.)
