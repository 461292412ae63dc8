//! Fabric transports for librdmasock.
//!
//! The folders show the seam:
//! * [`os`]: every OS call ([`sys`]) and socket addresses ([`addr`]);
//! * [`rendezvous`]: how two shims find each other and agree: the rule that picks a
//!   fabric ([`choice`]), how listeners are found ([`discovery`]: a trait, over the
//!   registry or a fabric's own table), the per-user registry of listeners and offers ([`registry`]),
//!   a listener's shared offer slots ([`mailbox`]), the kernel's word on who the peer
//!   is ([`diag`]);
//! * [`fabric`]: the transport interface (`Fabric`, `Offer`, `Stream`), and one folder
//!   per fabric: [`shm`] (shared-memory rings, with its byte [`ring`]) and [`kmod`]
//!   (the mailbox driver);
//! * shared by every fabric: [`layout`] (every shared byte layout), [`tcpstate`] (the
//!   TCP-semantics state machine), [`wait`] (doorbells and the spin policy), [`conn`]
//!   (blocking on streams), [`stats`] (per-process connection tables), [`config`].
//!
//! The old flat paths (`rdmasock_transport::shm`, `::registry`, `::sys`, ...) are
//! re-exported.
//!
//! Unsafe code is confined to the modules whose job it is: sys, addr, ring, wait, diag,
//! shm, kmod's uapi, mailbox and stats (raw memory and system calls).
#![deny(unsafe_code)]

pub mod os {
    pub mod addr;
    pub mod sys;
}
pub mod rendezvous {
    pub mod choice;
    pub mod diag;
    pub mod discovery;
    pub mod mailbox;
    pub mod registry;
}
pub mod config;
pub mod conn;
pub mod fabric;
pub mod layout;
pub mod stats;
pub mod tcpstate;
pub mod wait;

pub use fabric::shm::ring;
pub use fabric::{kmod, shm};
pub use os::{addr, sys};
pub use rendezvous::{choice, diag, discovery, mailbox, registry};
