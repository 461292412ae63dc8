//! Which fabric carries a connection: the one rule, for both ends.
//!
//! Every fabric has an id bit ([`fabric_id`]); a process's settings allow a set of them
//! ([`FabricSet`], `RDMASOCK_TRANSPORT`), a listener advertises the set its process
//! serves (the registry's listener record, the kmod driver's listener table), and for
//! each connection the client picks one from what both allow ([`choose`]); the server
//! claims in the order the same rule gives ([`claim_order`]), so the two ends agree
//! without a round trip of their own. Adding a fabric: give it a bit here, a place in
//! the two functions below, and its registration in the preload's `state::fabrics`.

use crate::fabric::Reason;

/// The id bit of each fabric, as listener adverts carry them.
pub mod fabric_id {
    /// Shared-memory rings between processes of one user in one kernel.
    pub const SHM: u8 = 1;
    /// The mailbox driver (`/dev/rdmasock`): kernel copies, any users of one kernel.
    pub const KMOD: u8 = 2;
    /// Every fabric this build knows.
    pub const ALL: u8 = SHM | KMOD;
}

/// A set of fabrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FabricSet(pub u8);

/// Names and ids, in the order of preference for a peer both can reach.
pub const NAMES: [(&str, u8); 2] = [("shm", fabric_id::SHM), ("kmod", fabric_id::KMOD)];

impl FabricSet {
    pub const NONE: FabricSet = FabricSet(0);
    pub const ALL: FabricSet = FabricSet(fabric_id::ALL);

    pub fn has(self, id: u8) -> bool {
        self.0 & id != 0
    }

    pub fn and(self, other: FabricSet) -> FabricSet {
        FabricSet(self.0 & other.0)
    }

    pub fn without(self, id: u8) -> FabricSet {
        FabricSet(self.0 & !id)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// `RDMASOCK_TRANSPORT`: `auto` (every fabric), `tcp` (none), or a comma-separated
    /// list of fabric names (`kmod,shm`). A list with a name this build does not know
    /// is a typo: it falls back to `auto` (a setting must never break the program),
    /// with `false` beside it so that the caller can say so.
    pub fn parse(v: &str) -> (FabricSet, bool) {
        let v = v.trim();
        match v {
            "" | "auto" => return (FabricSet::ALL, true),
            "tcp" | "none" => return (FabricSet::NONE, true),
            _ => {}
        }
        let mut set = 0;
        for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match NAMES.iter().find(|(n, _)| *n == name) {
                Some((_, id)) => set |= id,
                None => return (FabricSet::ALL, false),
            }
        }
        if set == 0 {
            return (FabricSet::ALL, false);
        }
        (FabricSet(set), true)
    }

    /// `shm,kmod`, or `tcp` for none.
    pub fn names(self) -> String {
        let v: Vec<&str> = NAMES.iter().filter(|(_, id)| self.has(*id)).map(|(n, _)| *n).collect();
        if v.is_empty() {
            "tcp".into()
        } else {
            v.join(",")
        }
    }
}

/// The name of one fabric id.
pub fn name_of(id: u8) -> &'static str {
    NAMES.iter().find(|(_, i)| *i == id).map_or("tcp", |(n, _)| n)
}

/// What the client knows of the listener it connects to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Advert {
    /// The fabrics the listener's process serves (its advert; for a listener whose
    /// accepting processes run as another user than its registrant, without shm).
    pub serves: FabricSet,
    /// The listener runs as our user.
    pub same_user: bool,
}

/// The client's choice for one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    Fabric(u8),
    Tcp(Reason),
}

/// Pick the fabric for a connection to a listener in this kernel, from `mine` (the
/// fabrics this process allows and has) and the listener's advert; `cross_user`: this
/// process lets another user's process be its peer on a fabric that shares no memory.
///
/// The rules, and why (in the manner of Linux vsock's `vsock_assign_transport`):
/// * Only a fabric both ends allow: each end's settings are its own to make, so a
///   fabric one of them does not allow is never used, and with none in common the
///   connection stays on TCP at once (no offer is posted that would wait out the
///   claim deadline).
/// * Same kernel, same user: shm first. It is the fastest (no system call per
///   transfer), and a peer of one's own user may share pages: it could ptrace us
///   anyway.
/// * Same kernel, another user: only kmod. Shared pages would let one user scribble
///   on memory the other trusts and see its bytes at rest; the driver copies in the
///   kernel and shares nothing, so the peer sees what TCP would show it (the bytes
///   sent, and its uid as SO_PEERCRED tells). Unless `cross_user` is off.
/// * Another kernel (VMs, other hosts): the fabrics of later issues (ivshmem, verbs);
///   none in this build, so such a destination never gets here (remote-destination).
/// * Anything else: TCP.
pub fn choose(mine: FabricSet, advert: &Advert, cross_user: bool) -> Choice {
    let common = mine.and(advert.serves);
    if common.is_empty() {
        return Choice::Tcp(Reason::NoCommonFabric);
    }
    if advert.same_user {
        if common.has(fabric_id::SHM) {
            return Choice::Fabric(fabric_id::SHM);
        }
        return Choice::Fabric(fabric_id::KMOD);
    }
    if !cross_user {
        return Choice::Tcp(Reason::PeerOtherUid);
    }
    if common.has(fabric_id::KMOD) {
        return Choice::Fabric(fabric_id::KMOD);
    }
    Choice::Tcp(Reason::PeerOtherUid)
}

/// At accept: the fabrics whose offers to look for, in order, for a client of our user
/// (`same_user`) or not, by the rule of [`choose`] (a client picks shm first when it
/// can, so a same-user offer is looked for there first).
pub fn claim_order(mine: FabricSet, same_user: bool, cross_user: bool) -> impl Iterator<Item = u8> {
    let order: &[u8] = if same_user {
        &[fabric_id::SHM, fabric_id::KMOD]
    } else if cross_user {
        &[fabric_id::KMOD]
    } else {
        &[]
    };
    order.iter().copied().filter(move |id| mine.has(*id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fabric_id::*;

    #[test]
    fn settings_parse() {
        assert_eq!(FabricSet::parse("auto"), (FabricSet::ALL, true));
        assert_eq!(FabricSet::parse(""), (FabricSet::ALL, true));
        assert_eq!(FabricSet::parse("tcp"), (FabricSet::NONE, true));
        assert_eq!(FabricSet::parse("kmod"), (FabricSet(KMOD), true));
        assert_eq!(FabricSet::parse(" kmod , shm "), (FabricSet(KMOD | SHM), true));
        assert_eq!(FabricSet::parse("shm,shm"), (FabricSet(SHM), true));
        assert_eq!(FabricSet::parse("shm,rdma"), (FabricSet::ALL, false));
        assert_eq!(FabricSet::parse(","), (FabricSet::ALL, false));
        assert_eq!(FabricSet(KMOD | SHM).names(), "shm,kmod");
        assert_eq!(FabricSet::NONE.names(), "tcp");
        assert_eq!(name_of(KMOD), "kmod");
    }

    /// Every combination of settings on the two ends, same user or not: the client's
    /// choice is a fabric both allow and the server looks there; with none in common,
    /// TCP with its reason.
    #[test]
    fn both_ends_agree_for_every_combination() {
        for client in 0..=ALL {
            for server in 0..=ALL {
                for same_user in [true, false] {
                    for cross in [true, false] {
                        let (c, s) = (FabricSet(client), FabricSet(server));
                        let got = choose(c, &Advert { serves: s, same_user }, cross);
                        match got {
                            Choice::Fabric(id) => {
                                assert!(c.has(id) && s.has(id), "{client} {server} -> {id}");
                                assert!(same_user || (cross && id == KMOD));
                                // The server (same cross-user setting) looks there.
                                assert!(claim_order(s, same_user, cross).any(|x| x == id));
                                // ... and first, unless the client cannot use the first.
                                let first = claim_order(s, same_user, cross).next().unwrap();
                                assert!(first == id || !c.has(first));
                            }
                            Choice::Tcp(r) => {
                                let common = c.and(s);
                                assert!(
                                    common.is_empty() && r == Reason::NoCommonFabric
                                        || !same_user && r == Reason::PeerOtherUid && (!cross || !common.has(KMOD)),
                                    "{client} {server} {same_user} {cross}: {r:?}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_rules() {
        let adv = |serves, same_user| Advert { serves: FabricSet(serves), same_user };
        assert_eq!(choose(FabricSet::ALL, &adv(ALL, true), true), Choice::Fabric(SHM));
        assert_eq!(choose(FabricSet::ALL, &adv(KMOD, true), true), Choice::Fabric(KMOD));
        assert_eq!(choose(FabricSet(SHM), &adv(KMOD, true), true), Choice::Tcp(Reason::NoCommonFabric));
        assert_eq!(choose(FabricSet::ALL, &adv(ALL, false), true), Choice::Fabric(KMOD));
        assert_eq!(choose(FabricSet::ALL, &adv(ALL, false), false), Choice::Tcp(Reason::PeerOtherUid));
        assert_eq!(choose(FabricSet::ALL, &adv(SHM, false), true), Choice::Tcp(Reason::PeerOtherUid));
        assert_eq!(choose(FabricSet::NONE, &adv(ALL, true), true), Choice::Tcp(Reason::NoCommonFabric));
    }
}
