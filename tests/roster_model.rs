//! The roster against a model: a random sequence of `addParties`, `updParties` and
//! `delParties`, generated from a model list of the conference's parties (the core's list),
//! applied to a [`Roster`] one `conf.changed` at a time, always leaves the roster equal to the
//! model. The seed is fixed: every run is the same run.

use callme::wire::{ClusterId, ConfChanged, ConfId, PartyData, PartyGone, PartyId};
use callme::{Roster, RosterChange};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

/// One step, resolved against the model when it is applied.
#[derive(Debug, Clone)]
struct Op {
    kind: u8,
    pick: usize,
    index: u64,
    keep_index: bool,
    old_index: bool,
    mic_on: bool,
    talking: bool,
    state: u64,
    name: u8,
}

fn op() -> impl Strategy<Value = Op> {
    (0u8..5, any::<usize>(), 0u64..40, any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>(), 1u64..4, 0u8..4).prop_map(
        |(kind, pick, index, keep_index, old_index, mic_on, talking, state, name)| Op {
            kind,
            pick,
            index,
            keep_index,
            old_index,
            mic_on,
            talking,
            state,
            name,
        },
    )
}

/// The first index at or after `from` (wrapping in 0..64) that no other party holds.
fn free_index(model: &[PartyData], from: u64, except: Option<PartyId>) -> u64 {
    (0..64).map(|i| (from + i) % 64).find(|i| !model.iter().any(|p| p.index == *i && Some(p.id) != except)).expect("fewer than 64 parties")
}

fn shown(parties: &[PartyData]) -> Vec<(u64, u64, String, u64, bool, bool)> {
    let mut v: Vec<_> = parties.iter().map(|p| (p.index, p.id.0, p.name.clone(), p.state, p.mic_on, p.talking)).collect();
    v.sort();
    v.into_iter().map(|(i, id, n, s, m, t)| (id, i, n, s, m, t)).collect()
}

fn roster_shown(r: &Roster) -> Vec<(u64, u64, String, u64, bool, bool)> {
    r.members().iter().map(|m| (m.id.0, m.index, m.name.clone(), m.state.code(), m.mic_on, m.talking)).collect()
}

proptest! {
    #![proptest_config(Config { cases: 256, rng_seed: RngSeed::Fixed(0x0070_57e7), failure_persistence: None, ..Config::default() })]

    #[test]
    fn a_roster_applying_random_changes_always_equals_the_model(ops in prop::collection::vec(op(), 1..60)) {
        let names = ["ann", "ben", "cat", "dan"];
        let at = ConfChanged { cluster: ClusterId(1), conf: ConfId(7), ..ConfChanged::default() };
        let mut model: Vec<PartyData> = vec![PartyData::new(PartyId(1), 0, "first")];
        let mut roster = Roster::new(ConfId(7), &model);
        let mut next_id = 2u64;
        for op in ops {
            let existing = (!model.is_empty()).then(|| op.pick % model.len());
            let mut p = PartyData::new(PartyId(0), 0, names[usize::from(op.name)]);
            (p.mic_on, p.talking, p.state) = (op.mic_on, op.talking, op.state);
            let event = match (op.kind, existing) {
                // A new party.
                (0, _) | (1..=3, None) => {
                    p.id = PartyId(next_id);
                    next_id += 1;
                    p.index = free_index(&model, op.index, None);
                    model.push(p.clone());
                    ConfChanged { add: vec![p], ..at.clone() }
                }
                // An add for a party already there: it replaces the entry.
                (1, Some(i)) => {
                    p.id = model[i].id;
                    p.index = if op.keep_index { model[i].index } else { free_index(&model, op.index, Some(p.id)) };
                    model[i] = p.clone();
                    ConfChanged { add: vec![p], ..at.clone() }
                }
                // A change: found by OldIndex (or by the id when it is left out), stored under Index.
                (2, Some(i)) => {
                    p.id = model[i].id;
                    p.old_index = op.old_index.then_some(model[i].index);
                    p.index = if op.keep_index { model[i].index } else { free_index(&model, op.index, Some(p.id)) };
                    model[i] = PartyData { old_index: None, ..p.clone() };
                    ConfChanged { upd: vec![p], ..at.clone() }
                }
                (3, Some(i)) => {
                    let gone = model.remove(i);
                    ConfChanged { del: vec![PartyGone { id: gone.id, index: gone.index }], ..at.clone() }
                }
                // A party nobody knows leaves: nothing changes, and it is reported.
                _ => {
                    let changes = roster.apply(&ConfChanged { del: vec![PartyGone { id: PartyId(10_000 + op.pick as u64 % 100), index: op.index }], ..at.clone() });
                    prop_assert!(matches!(&changes[..], [RosterChange::Anomaly(_)]), "{changes:?}");
                    prop_assert_eq!(roster_shown(&roster), shown(&model));
                    continue;
                }
            };
            let changes = roster.apply(&event);
            prop_assert!(!changes.iter().any(|c| matches!(c, RosterChange::Anomaly(_))), "no anomaly for a consistent change: {changes:?}");
            prop_assert_eq!(roster_shown(&roster), shown(&model), "after {:?}", event);
        }
    }
}
