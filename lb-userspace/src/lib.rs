//! xlb's control plane as a library: the pure core (table building) and the thin layers
//! that load the XDP program and write its maps. The `xlb` binary is a thin CLI on top.

pub mod announce;
pub mod api;
pub mod bird;
pub mod config;
pub mod controller;
pub mod daemon;
pub mod dataplane;
pub mod flowstate;
pub mod guard;
pub mod health;
pub mod history;
pub mod lock;
pub mod neighbour;
pub mod object;
pub mod reload;
pub mod rollout;
pub mod table;
pub mod trace;
pub mod watch;
