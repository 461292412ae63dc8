//! Fabric transports for librdmasock.
//!
//! Layers, bottom up: [`sys`] (every OS call), [`layout`] (every shared byte layout),
//! [`ring`] (the single-producer single-consumer byte ring), [`wait`] (doorbells and the
//! spin policy), [`registry`] (who listens, who offers), [`mailbox`] (a listener's
//! shared offer slots), [`diag`] (the kernel's word on
//! who the peer is), [`fabric`] (the transport interface), [`shm`] (the shared-memory
//! fabric), [`conn`] (blocking on streams), [`stats`] (per-process connection tables).
//!
//! Unsafe code is confined to the modules whose job it is: sys, addr, ring, wait, diag,
//! shm, mailbox and stats (raw memory and system calls).
#![deny(unsafe_code)]

pub mod addr;
pub mod choice;
pub mod config;
pub mod conn;
pub mod diag;
pub mod fabric;
pub mod kmod;
pub mod layout;
pub mod mailbox;
pub mod registry;
pub mod ring;
pub mod shm;
pub mod stats;
pub mod sys;
pub mod tcpstate;
pub mod wait;
