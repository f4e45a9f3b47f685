//! The order in which the input link's QoS 1 messages came on the current
//! connection, and which of their acknowledgements may go out.
//!
//! MQTT asks a client to acknowledge in the order the messages came
//! [MQTT-4.6.0-2], and brokers count on it: Mosquitto matches a PUBACK by
//! walking its list of the client's unacknowledged messages from the
//! oldest. Answers finish out of order (a refusal's error is sent ahead of
//! the results queued before it, a fast model overtakes a slow one), and
//! in a backlog of thousands each acknowledgement sent as its answer
//! finished walked past thousands. In a 30,000 msg/s overload, with no
//! window on the broker, that cost the broker 0.13-1.45 CPU-s per 1,000
//! messages, and 75,000-108,000 of the 300,000 were still unanswered when
//! it ended; in order, 0.06-0.09 CPU-s and none (bench/notes.md).
//!
//! Strict order has its own cost: with a broker that lets only a few
//! messages wait unacknowledged (Mosquitto's default is 20), a slow
//! model's input would hold back every later acknowledgement, and so stop
//! the broker sending a fast model anything until it is done. So an
//! answered message's acknowledgement may overtake earlier unanswered ones
//! while there are fewer than a limit of them: [`OVERTAKE_LIMIT`] with
//! 3.1.1, at or above Mosquitto's 20 and EMQX's 32 (within such a window
//! the order adds no wait), and with MQTT 5 the Receive Maximum the daemon
//! asks for, if larger (there the order never adds a wait, and the window
//! bounds the walk). The broker's walk is then at most that long (plus any
//! withheld messages, which stay in its list). With 3.1.1 and a window
//! larger than the limit (not none), a model with a longer backlog does
//! hold back the acknowledgements of the messages after it, and the broker
//! waits with them once its window is full.
//!
//! Each message is numbered as it comes; its number goes with its
//! `InputAck`. Pure bookkeeping: `ingress::Acker` sends what this releases.

use std::collections::VecDeque;

use crate::config::Protocol;

/// How many earlier messages may still be unanswered when an answered
/// one's acknowledgement goes out ahead of them.
pub const OVERTAKE_LIMIT: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Slot {
    Unanswered(u16),
    /// Answered, its acknowledgement waiting for its turn.
    Answered(u16),
    /// Never to be acknowledged (an answer was lost): the broker redelivers
    /// it, so later ones need not wait for it.
    Withheld,
    /// Acknowledged, or withheld and passed.
    Settled,
}

#[derive(Debug)]
pub struct Arrivals {
    /// See [`Arrivals::new`].
    limit: usize,
    /// The number of `slots[0]`; `slots` starts at the oldest message not
    /// yet settled.
    first: u64,
    slots: VecDeque<Slot>,
    /// Slots before this index are released: each one's acknowledgement
    /// goes out as soon as it is answered.
    released: usize,
    /// Unanswered slots before `released`. Unless every slot is released,
    /// it equals `limit`: the slot at `released` has that many
    /// unanswered messages ahead of it.
    unanswered: usize,
}

/// The overtaking limit for a connection. With MQTT 5 the broker sends at
/// most the Receive Maximum the daemon asks for unacknowledged, which
/// bounds its walk; holding acknowledgements back there could only fill
/// that window, so none waits while fewer than that many are unanswered.
pub fn overtake_limit(protocol: &Protocol) -> usize {
    match protocol {
        Protocol::V311 => OVERTAKE_LIMIT,
        Protocol::V5 {
            receive_maximum, ..
        } => OVERTAKE_LIMIT.max(usize::from(*receive_maximum)),
    }
}

impl Arrivals {
    /// An answered message's acknowledgement goes out while fewer than
    /// `limit` messages before it are unanswered.
    pub fn new(limit: usize) -> Arrivals {
        Arrivals {
            limit,
            first: 0,
            slots: VecDeque::new(),
            released: 0,
            unanswered: 0,
        }
    }

    /// Forgets every message, keeping the limit: a new connection's
    /// packet ids start a new order.
    pub fn reset(&mut self) {
        *self = Arrivals::new(self.limit);
    }

    /// A message came: its number, for settling it.
    pub fn arrived(&mut self, packet_id: u16) -> u64 {
        let number = self.first + self.slots.len() as u64;
        self.slots.push_back(Slot::Unanswered(packet_id));
        self.release(&mut |_| {});
        number
    }

    /// The message numbered `number` was answered (`answered`) or will not
    /// be acknowledged; `send` gets, in the order the messages came, every
    /// packet id whose acknowledgement may go out now.
    pub fn settle(&mut self, number: u64, answered: bool, send: &mut impl FnMut(u16)) {
        let Some(at) = number
            .checked_sub(self.first)
            .and_then(|at| usize::try_from(at).ok())
            .filter(|&at| at < self.slots.len())
        else {
            debug_assert!(false, "message {number} settled twice or never arrived");
            return;
        };
        let Slot::Unanswered(packet_id) = self.slots[at] else {
            debug_assert!(false, "message {number} settled twice");
            return;
        };
        if at < self.released {
            if answered {
                send(packet_id);
            }
            self.slots[at] = Slot::Settled;
            self.unanswered -= 1;
            self.release(send);
        } else {
            self.slots[at] = if answered {
                Slot::Answered(packet_id)
            } else {
                Slot::Withheld
            };
        }
        while self.slots.front() == Some(&Slot::Settled) {
            self.slots.pop_front();
            self.first += 1;
            self.released -= 1;
        }
    }

    /// Releases slots in order until `limit` unanswered ones are
    /// released, sending the answered ones among them. Each slot is
    /// released once, so this costs O(1) per message, amortized.
    fn release(&mut self, send: &mut impl FnMut(u16)) {
        while self.released < self.slots.len() && self.unanswered < self.limit {
            let slot = &mut self.slots[self.released];
            match *slot {
                Slot::Unanswered(_) => self.unanswered += 1,
                Slot::Answered(packet_id) => {
                    send(packet_id);
                    *slot = Slot::Settled;
                }
                Slot::Withheld => *slot = Slot::Settled,
                Slot::Settled => {}
            }
            self.released += 1;
        }
    }

    /// Slots kept: from the oldest message not yet settled on.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settle(a: &mut Arrivals, number: u64, answered: bool) -> Vec<u16> {
        let mut sent = Vec::new();
        a.settle(number, answered, &mut |id| sent.push(id));
        sent
    }

    fn arrive(a: &mut Arrivals, ids: std::ops::Range<u16>) -> Vec<u64> {
        ids.map(|id| a.arrived(id)).collect()
    }

    #[test]
    fn with_few_unanswered_each_goes_out_when_answered() {
        let mut a = Arrivals::new(OVERTAKE_LIMIT);
        let n = arrive(&mut a, 1..21);
        // A broker's default window of 20: the last answered first.
        assert_eq!(settle(&mut a, n[19], true), vec![20]);
        assert_eq!(settle(&mut a, n[5], true), vec![6]);
        for (i, &number) in n.iter().enumerate() {
            if i != 19 && i != 5 {
                assert_eq!(settle(&mut a, number, true), vec![i as u16 + 1]);
            }
        }
        assert_eq!(a.held(), 0);
    }

    #[test]
    fn behind_many_unanswered_an_answer_waits_for_its_turn() {
        let mut a = Arrivals::new(OVERTAKE_LIMIT);
        let limit = OVERTAKE_LIMIT as u16;
        let n = arrive(&mut a, 0..limit + 2);
        // The newest has OVERTAKE_LIMIT + 1 unanswered ahead, the one
        // before it OVERTAKE_LIMIT: both wait.
        assert!(settle(&mut a, n[limit as usize + 1], true).is_empty());
        assert!(settle(&mut a, n[limit as usize], true).is_empty());
        // One within the limit goes at once, and leaves both waiting ones
        // with OVERTAKE_LIMIT - 1 unanswered ahead.
        assert_eq!(settle(&mut a, n[3], true), vec![3, limit, limit + 1]);
        assert_eq!(settle(&mut a, n[0], true), vec![0]);
        // Settled ones leave once nothing older is left.
        assert_eq!(a.held(), limit as usize + 1);
    }

    #[test]
    fn a_backlog_is_acknowledged_in_the_order_it_came() {
        // Thousands queued, the newest refused first: every acknowledgement
        // leaves in arrival order, except within the overtaking limit.
        let mut a = Arrivals::new(OVERTAKE_LIMIT);
        let n = arrive(&mut a, 0..3000);
        let mut sent = Vec::new();
        for &number in n[2000..].iter().rev() {
            a.settle(number, true, &mut |id| sent.push(id));
        }
        assert!(sent.is_empty(), "refusals overtook 2,000 unanswered");
        for &number in &n[..2000] {
            a.settle(number, true, &mut |id| sent.push(id));
        }
        // Once fewer than OVERTAKE_LIMIT of the first 2,000 are left, the
        // refusals go ahead of them.
        let last_wait = 2000 - OVERTAKE_LIMIT as u16 + 1;
        let want: Vec<u16> = (0..last_wait)
            .chain(2000..3000)
            .chain(last_wait..2000)
            .collect();
        assert!(sent == want, "acknowledged out of order");
        assert_eq!(a.held(), 0);
    }

    #[test]
    fn a_withheld_message_holds_nothing_back_and_is_never_sent() {
        let mut a = Arrivals::new(OVERTAKE_LIMIT);
        let n = arrive(&mut a, 0..100);
        assert!(settle(&mut a, n[99], true).is_empty());
        assert!(settle(&mut a, n[50], false).is_empty());
        let mut sent = Vec::new();
        for (i, &number) in n[..99].iter().enumerate() {
            if i != 50 {
                a.settle(number, true, &mut |id| sent.push(id));
            }
        }
        // 99 waits until fewer than OVERTAKE_LIMIT are unanswered ahead of
        // it: 50 does not count.
        let overtaken = 99 - OVERTAKE_LIMIT as u16 + 1;
        let want: Vec<u16> = (0..overtaken)
            .filter(|&i| i != 50)
            .chain([99])
            .chain(overtaken..99)
            .collect();
        assert_eq!(sent, want);
        assert_eq!(a.held(), 0);
        // Numbers go on after the ledger empties.
        assert_eq!(a.arrived(7), 100);
        assert_eq!(settle(&mut a, 100, true), vec![7]);
    }

    #[test]
    fn any_order_of_answers_follows_the_rule_exactly() {
        // A reference model checked after every step: an acknowledgement is
        // sent exactly once, only with fewer than OVERTAKE_LIMIT unanswered
        // messages ahead of it, and an answered one waits only with at
        // least that many ahead; a withheld one is never sent.
        #[derive(Clone, Copy, PartialEq)]
        enum Is {
            Unanswered,
            Waiting,
            Sent,
            Withheld,
        }
        let mut a = Arrivals::new(OVERTAKE_LIMIT);
        let mut state = 0x2545_f491_u64;
        let mut random = move |below: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % below as u64) as usize
        };
        // By number; a message's packet id is its number (unique here).
        let mut model: Vec<Is> = Vec::new();
        let mut open: Vec<u64> = Vec::new();
        let ahead = |model: &[Is], number: usize| {
            model[..number]
                .iter()
                .filter(|&&is| is == Is::Unanswered)
                .count()
        };
        for step in 0..=3_000 {
            if step < 3_000 {
                let number = a.arrived(step as u16);
                assert_eq!(number, model.len() as u64);
                model.push(Is::Unanswered);
                open.push(number);
            }
            while !open.is_empty() && (open.len() > 300 || step == 3_000 || random(3) == 0) {
                let number = open.swap_remove(random(open.len()));
                let answered = random(40) != 0;
                model[number as usize] = if answered { Is::Waiting } else { Is::Withheld };
                let mut sent = Vec::new();
                a.settle(number, answered, &mut |id| sent.push(id));
                for id in sent {
                    let at = usize::from(id);
                    assert!(
                        model[at] == Is::Waiting,
                        "message {at} sent again or unanswered"
                    );
                    assert!(
                        ahead(&model, at) < OVERTAKE_LIMIT,
                        "message {at} overtook too many"
                    );
                    model[at] = Is::Sent;
                }
                let mut unanswered = 0;
                for (at, is) in model.iter().enumerate() {
                    match is {
                        Is::Unanswered => unanswered += 1,
                        Is::Waiting => assert!(unanswered >= OVERTAKE_LIMIT, "{at} held back"),
                        Is::Sent | Is::Withheld => {}
                    }
                }
            }
        }
        assert!(open.is_empty());
        assert!(model.iter().all(|is| matches!(is, Is::Sent | Is::Withheld)));
        assert!(model.contains(&Is::Withheld));
        assert_eq!(a.held(), 0);
    }
}
