//! The conference's parties as typed values, kept by applying `conf.changed` in order.
//!
//! A [`Roster`] starts from the `parties` of the `cd.load` answer and follows every
//! `conf.changed` of its conference exactly as the contract says (PROTOCOL §8): within one event
//! `addParties` first, then `updParties`, then `delParties`, each list in its order.
//!
//! - `addParties` inserts the party; an add for an id already present replaces that entry.
//! - `updParties` finds the entry by `OldIndex` (the entry of that party at that place), falling
//!   back to the party's id when `OldIndex` is absent or matches nothing, removes it and stores
//!   the new one under `Index`. An update for a party not in the roster adds it (the core says it
//!   exists), and says so as an [`Anomaly`].
//! - `delParties` removes the entry by `ID`; an unknown `ID` changes nothing and is reported.
//!
//! Members are ordered by `Index` (an entry stored under an index already taken goes after the
//! entries there). [`Roster::apply`] returns what changed, as [`RosterChange`]s, in order.

use std::fmt;

use serde_json::{Map, Value};

use crate::wire::{ConfChanged, ConfId, PartyData, PartyGone, PartyId};

/// `State` of a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MemberState {
    /// `1`: loaded, no audio.
    Loaded,
    /// `2`: its audio is connected.
    Connected,
    /// Any other value the core sent.
    Other(u64),
}

impl MemberState {
    /// The state for a `State` value.
    pub fn from_code(code: u64) -> Self {
        match code {
            PartyData::LOADED => MemberState::Loaded,
            PartyData::CONNECTED => MemberState::Connected,
            n => MemberState::Other(n),
        }
    }

    /// The `State` value.
    pub fn code(self) -> u64 {
        match self {
            MemberState::Loaded => PartyData::LOADED,
            MemberState::Connected => PartyData::CONNECTED,
            MemberState::Other(n) => n,
        }
    }
}

impl fmt::Display for MemberState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemberState::Loaded => write!(f, "loaded"),
            MemberState::Connected => write!(f, "connected"),
            MemberState::Other(n) => write!(f, "state {n}"),
        }
    }
}

/// One party of the conference, as its `partydata` says.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Member {
    /// `PARTY_ID`.
    pub id: PartyId,
    /// `Index`: its place in the conference's list.
    pub index: u64,
    /// `NAME`: the display name (empty below layer 3).
    pub name: String,
    /// `State`.
    pub state: MemberState,
    /// `bMicOn`.
    pub mic_on: bool,
    /// `bTalking`: its audio is heard in the mix.
    pub talking: bool,
    /// `layer`.
    pub layer: u64,
    /// Every other member of its `partydata`, as read.
    pub extra: Map<String, Value>,
}

impl Member {
    /// The member a `partydata` describes.
    pub fn from_party(p: &PartyData) -> Self {
        Member {
            id: p.id,
            index: p.index,
            name: p.name.clone(),
            state: MemberState::from_code(p.state),
            mic_on: p.mic_on,
            talking: p.talking,
            layer: p.layer,
            extra: p.extra.clone(),
        }
    }

    /// The `partydata` of this member (without `OldIndex`).
    pub fn to_party(&self) -> PartyData {
        let mut p = PartyData::new(self.id, self.index, &self.name);
        p.state = self.state.code();
        p.mic_on = self.mic_on;
        p.talking = self.talking;
        p.layer = self.layer;
        p.extra = self.extra.clone();
        p
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "#{} party {} {:?} {}, mic {}{}",
            self.index,
            self.id.0,
            self.name,
            self.state,
            if self.mic_on { "on" } else { "off" },
            if self.talking { ", talking" } else { "" }
        )
    }
}

/// Something in a `conf.changed` that does not fit the roster; reported, never a corruption.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Anomaly {
    /// `delParties` named a party the roster does not hold: nothing changed.
    UnknownDeleted {
        /// Its `ID`.
        id: PartyId,
        /// Its `index`.
        index: u64,
    },
    /// `updParties` named a party the roster does not hold: it was added.
    UnknownUpdated {
        /// Its `PARTY_ID`.
        id: PartyId,
    },
    /// `updParties` gave an `OldIndex` where the party was not; it was found by its id.
    OldIndexMismatch {
        /// Its `PARTY_ID`.
        id: PartyId,
        /// The `OldIndex` sent.
        old_index: u64,
        /// The index it had in the roster.
        had: u64,
    },
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Anomaly::UnknownDeleted { id, index } => {
                write!(f, "delParties names party {} (index {index}), which the roster does not hold: nothing changed", id.0)
            }
            Anomaly::UnknownUpdated { id } => write!(f, "updParties names party {}, which the roster did not hold: added", id.0),
            Anomaly::OldIndexMismatch { id, old_index, had } => {
                write!(f, "updParties gives party {} OldIndex {old_index}, but it was at {had}: found by its id", id.0)
            }
        }
    }
}

/// One change of the roster, as [`Roster::apply`] reports it. A member in a change is as it
/// is after the change (for [`RosterChange::Left`], as it was).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RosterChange {
    /// A party was added.
    Joined(Member),
    /// A party left.
    Left(Member),
    /// Its microphone was switched (`mic_on` is the new value).
    MicChanged(Member),
    /// Its audio began to be heard in the mix.
    TalkingStarted(Member),
    /// Its audio stopped being heard in the mix.
    TalkingStopped(Member),
    /// Its `State` changed.
    StateChanged {
        /// The member now.
        member: Member,
        /// The state it had.
        from: MemberState,
    },
    /// Its `NAME` changed.
    Renamed {
        /// The member now.
        member: Member,
        /// The name it had.
        from: String,
    },
    /// It is stored under another `Index`.
    Moved {
        /// The member now.
        member: Member,
        /// The index it had.
        from: u64,
    },
    /// Another member of its `partydata` changed ([`Member::extra`], `layer`).
    Updated(Member),
    /// Something that did not fit; the roster is as the rules above leave it.
    Anomaly(Anomaly),
}

impl RosterChange {
    /// The party the change is about.
    pub fn party(&self) -> Option<PartyId> {
        match self {
            RosterChange::Joined(m)
            | RosterChange::Left(m)
            | RosterChange::MicChanged(m)
            | RosterChange::TalkingStarted(m)
            | RosterChange::TalkingStopped(m)
            | RosterChange::Updated(m)
            | RosterChange::StateChanged { member: m, .. }
            | RosterChange::Renamed { member: m, .. }
            | RosterChange::Moved { member: m, .. } => Some(m.id),
            RosterChange::Anomaly(
                Anomaly::UnknownDeleted { id, .. } | Anomaly::UnknownUpdated { id } | Anomaly::OldIndexMismatch { id, .. },
            ) => Some(*id),
        }
    }
}

impl fmt::Display for RosterChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = |m: &Member| format!("party {} {:?}", m.id.0, m.name);
        match self {
            RosterChange::Joined(m) => write!(f, "joined: {m}"),
            RosterChange::Left(m) => write!(f, "left: {}", who(m)),
            RosterChange::MicChanged(m) => write!(f, "mic {}: {}", if m.mic_on { "on" } else { "off" }, who(m)),
            RosterChange::TalkingStarted(m) => write!(f, "talking: {}", who(m)),
            RosterChange::TalkingStopped(m) => write!(f, "stopped talking: {}", who(m)),
            RosterChange::StateChanged { member, from } => write!(f, "{}: {from} -> {}", who(member), member.state),
            RosterChange::Renamed { member, from } => write!(f, "renamed: party {} {from:?} -> {:?}", member.id.0, member.name),
            RosterChange::Moved { member, from } => write!(f, "moved: {} #{from} -> #{}", who(member), member.index),
            RosterChange::Updated(m) => write!(f, "updated: {m}"),
            RosterChange::Anomaly(a) => write!(f, "anomaly: {a}"),
        }
    }
}

/// The parties of one conference, ordered by `Index`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Roster {
    conf: ConfId,
    members: Vec<Member>,
}

impl Roster {
    /// The roster of conference `conf` from the `parties` of the `cd.load` answer (in any order;
    /// a repeated id keeps its last entry).
    pub fn new(conf: ConfId, parties: &[PartyData]) -> Self {
        let mut r = Roster { conf, members: Vec::with_capacity(parties.len()) };
        for p in parties {
            r.remove_id(p.id);
            r.insert(Member::from_party(p));
        }
        r
    }

    /// The conference this roster follows.
    pub fn conf(&self) -> ConfId {
        self.conf
    }

    /// The members, ordered by index.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// How many parties there are.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The member with this id.
    pub fn member(&self, id: PartyId) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    /// The first member with this display name.
    pub fn by_name(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    /// Whether `changed` is for this roster's conference.
    pub fn is_for(&self, changed: &ConfChanged) -> bool {
        changed.conf == self.conf
    }

    /// Applies one `conf.changed` (adds, then updates, then deletions) and says what changed.
    /// An event for another conference changes nothing and reports nothing.
    pub fn apply(&mut self, changed: &ConfChanged) -> Vec<RosterChange> {
        let mut out = Vec::new();
        if !self.is_for(changed) {
            return out;
        }
        for p in &changed.add {
            self.handle_add(p, &mut out);
        }
        for p in &changed.upd {
            self.handle_upd(p, &mut out);
        }
        for d in &changed.del {
            self.handle_del(d, &mut out);
        }
        out
    }

    fn handle_add(&mut self, p: &PartyData, out: &mut Vec<RosterChange>) {
        let new = Member::from_party(p);
        match self.remove_id(p.id) {
            Some(old) => diff(&old, &new, out),
            None => out.push(RosterChange::Joined(new.clone())),
        }
        self.insert(new);
    }

    fn handle_upd(&mut self, p: &PartyData, out: &mut Vec<RosterChange>) {
        let new = Member::from_party(p);
        let at_old = p.old_index.and_then(|oi| self.members.iter().position(|m| m.index == oi && m.id == p.id));
        let pos = at_old.or_else(|| self.members.iter().position(|m| m.id == p.id));
        match pos {
            Some(i) => {
                let old = self.members.remove(i);
                if let (Some(old_index), None) = (p.old_index, at_old) {
                    out.push(RosterChange::Anomaly(Anomaly::OldIndexMismatch { id: p.id, old_index, had: old.index }));
                }
                diff(&old, &new, out);
            }
            None => {
                out.push(RosterChange::Anomaly(Anomaly::UnknownUpdated { id: p.id }));
                out.push(RosterChange::Joined(new.clone()));
            }
        }
        self.insert(new);
    }

    fn handle_del(&mut self, d: &PartyGone, out: &mut Vec<RosterChange>) {
        match self.remove_id(d.id) {
            Some(old) => out.push(RosterChange::Left(old)),
            None => out.push(RosterChange::Anomaly(Anomaly::UnknownDeleted { id: d.id, index: d.index })),
        }
    }

    fn remove_id(&mut self, id: PartyId) -> Option<Member> {
        let i = self.members.iter().position(|m| m.id == id)?;
        Some(self.members.remove(i))
    }

    /// Inserts after every member at an index up to the new one's.
    fn insert(&mut self, m: Member) {
        let at = self.members.partition_point(|x| x.index <= m.index);
        self.members.insert(at, m);
    }
}

/// The changes from `old` to `new` of one party, in a fixed order.
fn diff(old: &Member, new: &Member, out: &mut Vec<RosterChange>) {
    if old.index != new.index {
        out.push(RosterChange::Moved { member: new.clone(), from: old.index });
    }
    if old.name != new.name {
        out.push(RosterChange::Renamed { member: new.clone(), from: old.name.clone() });
    }
    if old.state != new.state {
        out.push(RosterChange::StateChanged { member: new.clone(), from: old.state });
    }
    if old.mic_on != new.mic_on {
        out.push(RosterChange::MicChanged(new.clone()));
    }
    if old.talking != new.talking {
        out.push(if new.talking { RosterChange::TalkingStarted(new.clone()) } else { RosterChange::TalkingStopped(new.clone()) });
    }
    if old.extra != new.extra || old.layer != new.layer {
        out.push(RosterChange::Updated(new.clone()));
    }
}

impl fmt::Display for Roster {
    /// One line per member, in order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.members.is_empty() {
            return writeln!(f, "(nobody)");
        }
        for m in &self.members {
            writeln!(f, "{m}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ClusterId;

    fn party(id: u64, index: u64, name: &str) -> PartyData {
        PartyData::new(PartyId(id), index, name)
    }

    fn changed() -> ConfChanged {
        ConfChanged { cluster: ClusterId(1), conf: ConfId(7), ..ConfChanged::default() }
    }

    fn ids(r: &Roster) -> Vec<u64> {
        r.members().iter().map(|m| m.id.0).collect()
    }

    #[test]
    fn an_update_moves_the_party_found_by_old_index_to_its_new_index() {
        let mut r = Roster::new(ConfId(7), &[party(1, 0, "a"), party(2, 1, "b"), party(3, 2, "c")]);
        let mut moved = party(1, 5, "a");
        moved.old_index = Some(0);
        moved.mic_on = false;
        let changes = r.apply(&ConfChanged { upd: vec![moved], ..changed() });
        assert_eq!(ids(&r), [2, 3, 1]);
        assert!(matches!(&changes[..], [RosterChange::Moved { from: 0, .. }, RosterChange::MicChanged(m)] if !m.mic_on), "{changes:?}");
    }

    #[test]
    fn a_deletion_of_an_unknown_party_changes_nothing_and_is_reported() {
        let mut r = Roster::new(ConfId(7), &[party(1, 0, "a")]);
        let before = r.clone();
        let changes = r.apply(&ConfChanged { del: vec![PartyGone { id: PartyId(9), index: 3 }], ..changed() });
        assert_eq!(r, before);
        assert_eq!(changes, [RosterChange::Anomaly(Anomaly::UnknownDeleted { id: PartyId(9), index: 3 })]);
    }

    #[test]
    fn an_add_for_a_present_id_replaces_it() {
        let mut r = Roster::new(ConfId(7), &[party(1, 0, "a")]);
        let changes = r.apply(&ConfChanged { add: vec![party(1, 0, "alice")], ..changed() });
        assert_eq!(r.len(), 1);
        assert_eq!(r.members()[0].name, "alice");
        assert!(matches!(&changes[..], [RosterChange::Renamed { from, .. }] if from == "a"));
    }

    #[test]
    fn an_update_without_a_matching_old_index_falls_back_to_the_id() {
        let mut r = Roster::new(ConfId(7), &[party(1, 0, "a"), party(2, 1, "b")]);
        let mut u = party(2, 1, "b");
        u.old_index = Some(7);
        u.talking = true;
        let changes = r.apply(&ConfChanged { upd: vec![u], ..changed() });
        assert_eq!(ids(&r), [1, 2]);
        assert!(r.member(PartyId(2)).unwrap().talking);
        assert!(matches!(changes[0], RosterChange::Anomaly(Anomaly::OldIndexMismatch { old_index: 7, had: 1, .. })));
        assert!(matches!(changes[1], RosterChange::TalkingStarted(_)));
    }

    #[test]
    fn an_event_for_another_conference_changes_nothing() {
        let mut r = Roster::new(ConfId(7), &[]);
        let changes = r.apply(&ConfChanged { conf: ConfId(8), add: vec![party(1, 0, "a")], ..changed() });
        assert!(changes.is_empty());
        assert!(r.is_empty());
    }
}
