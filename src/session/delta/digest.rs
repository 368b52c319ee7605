//! The DeltaManager's digests: what this node holds (ids, versions, fingerprints, ends and
//! renames, no attributes), sent to a new member, to the members that stay after one left, and
//! to a joiner that asks (`GetDigest`); and the reading of another member's digest, which
//! applies the ends and renames that win and asks for the copies that may.

use super::DeltaCore;
use crate::member::MemberId;
use crate::session::id::SessionId;
use crate::session::outputs::{Dest, Out, SessionEvent};
use crate::session::reconcile::{live_beats_end, Stamp};
use crate::session::replica::{DigestEntry, Outcome, SessionMessage};
use std::collections::BTreeSet;

/// Digest entries a joiner keeps until its state transfer is done (beyond them it relies on
/// the transfer alone). An entry takes about 110 bytes (250 with the longest ids): 22 to 50 MB.
const MAX_PENDING_DIGEST_ENTRIES: usize = 200_000;

/// Digests owed to members not yet listed, at most (the oldest asker is forgotten first).
const MAX_DIGESTS_OWED: usize = 1_000;

/// How a digest is read: the two readings walk the same entries and differ in what they ask
/// for and whether an end wins over a live copy here.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// A new member's digest, or the answer to `GetDigest`: copies that may win over this
    /// node's (a higher rank, or any other content when the application merges) are asked
    /// for in batches (`GetSessions`) and merged; an end wins only over an older copy; the
    /// access time of a copy kept here follows theirs.
    Merge,
    /// The digest of a member that stays after another left
    /// ([`SessionMessage::DigestAfterLeave`]): newer copies, missing copies and the copy a
    /// forked copy here waits for are asked for, one `GetSession` each and once per session;
    /// an end wins over a live copy; nothing ended here comes back.
    AfterLeave,
}

/// What a digest's live entry asks of this node.
enum Verdict {
    /// Their copy may win: ask for it.
    Ask,
    /// This node's copy stays.
    Keep,
    /// This node's copy stays and the sender is told its version (after a leave).
    TellVersion,
}

impl Reading {
    /// Whether their end at version `at` ends this node's (announced) copy at `mine`.
    fn end_wins(self, mine: u64, at: u64) -> bool {
        match self {
            Reading::Merge => !live_beats_end(mine, at),
            // No copy beyond it can have been acknowledged by the member that left.
            Reading::AfterLeave => true,
        }
    }
}

impl DeltaCore {
    /// The answer to `GetDigest`: this node's digest, then an empty chunk that says it is
    /// whole. Only once `to` is one of this node's members: from then on every change made
    /// here goes to it too, so the digest and those changes leave nothing out. Until then the
    /// answer waits (bounded by `MAX_DIGESTS_OWED`) and goes with the digest a new member gets.
    pub fn answer_get_digest(&mut self, to: MemberId, now_ms: u64) -> Vec<Out> {
        // A node still joining itself answers when its own transfer is done
        // (`answer_owed_digests`): its store is not whole yet.
        if self.members.binary_search(&to).is_err() || !self.ready {
            if self.digests_owed.len() >= MAX_DIGESTS_OWED {
                self.digests_owed.pop_first();
            }
            self.digests_owed.insert(to);
            return Vec::new();
        }
        self.digest_to(to, now_ms, true)
    }

    /// The digests owed to members listed here, once this node is ready: a member asked while
    /// this node was still joining (and listed it then, when no digest goes out) would
    /// otherwise wait for it until its deadline, holding every request.
    pub fn answer_owed_digests(&mut self, now_ms: u64) -> Vec<Out> {
        let members = &self.members;
        let listed: Vec<MemberId> = self
            .digests_owed
            .iter()
            .filter(|m| members.binary_search(m).is_ok())
            .copied()
            .collect();
        if !self.ready || listed.is_empty() {
            return Vec::new();
        }
        let copies = Self::digest_copies(self.digest(now_ms), listed.len());
        listed
            .into_iter()
            .zip(copies)
            .flat_map(|(m, chunks)| {
                self.digests_owed.remove(&m);
                Self::digest_out(chunks, m, true)
            })
            .collect()
    }

    /// This node's digest for `to`, ending with an empty chunk if `whole`.
    fn digest_to(&self, to: MemberId, now_ms: u64, whole: bool) -> Vec<Out> {
        Self::digest_out(self.digest(now_ms), to, whole)
    }

    /// The digest `chunks` as messages to `to`, ending with an empty chunk if `whole`.
    pub(super) fn digest_out(chunks: Vec<Vec<DigestEntry>>, to: MemberId, whole: bool) -> Vec<Out> {
        let end = whole.then(Vec::new);
        chunks
            .into_iter()
            .chain(end)
            .map(|c| Out {
                dest: Dest::Member(to),
                msg: SessionMessage::Digest(c),
            })
            .collect()
    }

    /// `n` copies of a digest's `chunks`, the last one the chunks themselves: a digest for one
    /// member is never copied.
    pub(super) fn digest_copies(
        chunks: Vec<Vec<DigestEntry>>,
        n: usize,
    ) -> impl Iterator<Item = Vec<Vec<DigestEntry>>> {
        let mut last = Some(chunks);
        (0..n).filter_map(move |i| {
            if i + 1 == n {
                last.take()
            } else {
                last.clone()
            }
        })
    }

    /// What this node holds, in chunks of `send_all_sessions_size`: renames first (so a
    /// receiver moves its copy before comparing), live copies, then ends still relevant. Made
    /// chunk by chunk: the entries are never all in one list as well.
    pub(super) fn digest(&self, now_ms: u64) -> Vec<Vec<DigestEntry>> {
        // Ends and renames older than any copy elsewhere could still be are left out.
        let tombs = || {
            self.store
                .tombstones()
                .filter(move |(_, t)| t.relevant_until_ms > now_ms)
        };
        let renames = tombs().filter_map(|(id, t)| {
            let new = t.renamed.clone()?;
            Some(DigestEntry::Renamed(id.clone(), new, t.version))
        });
        let live = self
            .store
            .ids()
            .filter(|id| !self.unannounced.contains(*id))
            .filter_map(|id| self.store.get(id))
            .map(|s| DigestEntry::Live(s.id().clone(), Stamp::of_session(s)));
        let ends = tombs()
            .filter(|(_, t)| t.renamed.is_none())
            .map(|(id, t)| DigestEntry::Ended(id.clone(), t.version));
        let n = self.cfg.send_all_sessions_size.max(1);
        let mut chunks = Vec::new();
        let mut chunk = Vec::new();
        for e in renames.chain(live).chain(ends) {
            if chunk.len() == n {
                chunks.push(std::mem::take(&mut chunk));
            }
            chunk.push(e);
        }
        if !chunk.is_empty() {
            chunks.push(chunk);
        }
        chunks
    }

    /// A digest that came while this node is not ready: kept to be read once it is, within
    /// `MAX_PENDING_DIGEST_ENTRIES`.
    pub(super) fn hold_digest(&mut self, from: MemberId, entries: &[DigestEntry]) {
        // An empty digest says nothing and is not kept: counted by entries, the bound would
        // not hold empty ones.
        let held = self.pending_digest_entries;
        if !entries.is_empty() && held + entries.len() <= MAX_PENDING_DIGEST_ENTRIES {
            self.pending_digest_entries += entries.len();
            self.pending_digests.push((from, entries.to_vec()));
        }
    }

    pub(super) fn read_pending_digests(&mut self) -> (Vec<Out>, Vec<SessionEvent>) {
        let (mut outs, mut events) = (Vec::new(), Vec::new());
        self.pending_digest_entries = 0;
        for (from, entries) in std::mem::take(&mut self.pending_digests) {
            let (o, e) = self.read_digest(from, &entries);
            outs.extend(o);
            events.extend(e);
        }
        (outs, events)
    }

    /// Compares a member's digest with this node's copies: ends and renames that win apply
    /// here at once; copies that may win are asked for.
    pub(super) fn read_digest(
        &mut self,
        from: MemberId,
        entries: &[DigestEntry],
    ) -> (Vec<Out>, Vec<SessionEvent>) {
        let mut outs = Vec::new();
        let (want, events) = self.read_entries(from, entries, Reading::Merge, &mut outs);
        let asks = want
            .chunks(self.cfg.send_all_sessions_size.max(1))
            .map(|ids| Out {
                dest: Dest::Member(from),
                msg: SessionMessage::GetSessions(ids.to_vec()),
            });
        (asks.chain(outs).collect(), events)
    }

    /// Reads the digest of a member that stays after another left (see
    /// [`SessionMessage::DigestAfterLeave`]): catches up on what this node missed of the one
    /// that left. Changes of id and ends apply at once (an end wins over a live copy here, as
    /// a late `Expired` would: no copy beyond it can have been acknowledged by that member);
    /// copies newer than this node's, copies it lacks, and the copy a forked copy here waits
    /// for are asked for, one `GetSession` each, by the id the sender named; a copy at the
    /// same version with another content stays, and nothing ended here comes back.
    pub(super) fn read_digest_after_leave(
        &mut self,
        from: MemberId,
        entries: &[DigestEntry],
    ) -> (Vec<Out>, Vec<SessionEvent>) {
        let mut outs = Vec::new();
        let (_, events) = self.read_entries(from, entries, Reading::AfterLeave, &mut outs);
        (outs, events)
    }

    /// Walks a digest's entries as `how` says: applies the renames and the ends that win.
    /// Returns the ids (as the sender named them) of the copies to ask for in batches
    /// (`Reading::Merge`); after a leave, each copy is asked for at once in `outs`, with this
    /// node's version where the sender's is a dead member's failed change, in digest order.
    fn read_entries(
        &mut self,
        from: MemberId,
        entries: &[DigestEntry],
        how: Reading,
        outs: &mut Vec<Out>,
    ) -> (Vec<SessionId>, Vec<SessionEvent>) {
        let mut want = Vec::new();
        // After a leave each session is asked for (or told of) once, however many of its ids
        // are named.
        let mut asked = BTreeSet::new();
        let mut events = Vec::new();
        for e in entries {
            match e {
                // After a leave, a session served here under `old` since the death: a change
                // of id this node never had is the dead member's failed one. `new` leads to
                // `old` here, so the sender's copy under `new` (in this digest) is compared
                // with this one rather than taken as another session. The sender hears this
                // copy's version under `old` at once, which makes it undo the change of id too
                // (`undo_a_dead_members_change_of_id`): left to this node's next change, the
                // undo never reached it when the user went on elsewhere (seed 74 of the kill
                // -9 simulation with route rebinding: the restarted renamer took the new id
                // from the sender's state transfer, and the session stayed under two ids).
                DigestEntry::Renamed(old, new, _)
                    if how == Reading::AfterLeave
                        && self.store.get(old).is_some_and(|s| s.served.here) =>
                {
                    self.store.undo_rename(old, new);
                    if asked.insert(old.clone()) {
                        outs.extend(self.version_to(from, old));
                    }
                }
                DigestEntry::Renamed(old, new, at) => {
                    events.extend(self.rename_as_told(how, from, old, new, *at));
                }
                DigestEntry::Live(id, theirs) => {
                    let cur = self.store.resolve(id).clone();
                    match self.verdict(how, &cur, theirs) {
                        Verdict::Ask if how == Reading::Merge => want.push(id.clone()),
                        Verdict::Ask => {
                            if asked.insert(cur) {
                                outs.push(Out {
                                    dest: Dest::Member(from),
                                    msg: SessionMessage::GetSession { id: id.clone() },
                                });
                            }
                        }
                        Verdict::TellVersion => {
                            if asked.insert(cur.clone()) {
                                outs.extend(self.version_to(from, &cur));
                            }
                        }
                        Verdict::Keep => {
                            if let (Reading::Merge, Some(s)) = (how, self.store.get_mut(&cur)) {
                                s.access(theirs.last_accessed_ms);
                            }
                        }
                    }
                }
                DigestEntry::Ended(id, at) => events.extend(self.end_as_told(how, id, *at)),
            }
        }
        (want, events)
    }

    /// What to do with their live copy `theirs` of the session held here as `cur`.
    fn verdict(&self, how: Reading, cur: &SessionId, theirs: &Stamp) -> Verdict {
        let asks = match (how, self.store.get(cur)) {
            (Reading::Merge, Some(s)) => {
                let mine = Stamp::of_session(s);
                !mine.same_contents(theirs) && (self.merger.is_some() || theirs.rank(&mine).is_gt())
            }
            (Reading::AfterLeave, Some(_)) if self.unannounced.contains(cur) => false,
            (Reading::AfterLeave, Some(s)) => {
                let awaited = self
                    .store
                    .fork_awaits(cur, theirs.version, theirs.fingerprint);
                // Served here since the death, below the sender's version: that version is
                // the dead member's failed change, and the user was served this copy. It
                // stays; the sender hears this copy's version, which makes it take this copy
                // (`served_below_a_dead_writers_version`).
                if s.served.here && theirs.version > s.version() && !awaited {
                    return Verdict::TellVersion;
                }
                theirs.version > s.version() || awaited
            }
            (Reading::Merge, None) => match self.store.tombstone(cur) {
                // Renamed away to an id not here: that id's own entry decides.
                Some(t) if t.renamed.is_some() => false,
                Some(t) => live_beats_end(theirs.version, t.version),
                None => true,
            },
            (Reading::AfterLeave, None) => self.store.tombstone(cur).is_none(),
        };
        if asks {
            Verdict::Ask
        } else {
            Verdict::Keep
        }
    }

    /// This node's version of `id`, told to `to` as an access (no content).
    fn version_to(&self, to: MemberId, id: &SessionId) -> Option<Out> {
        let s = self.store.get(id)?;
        Some(Out {
            dest: Dest::Member(to),
            msg: SessionMessage::Accessed {
                id: id.clone(),
                version: s.version(),
                last_accessed_ms: s.last_accessed_ms(),
                fingerprint: s.fingerprint(),
            },
        })
    }

    /// Their end of `id` at version `at`: ends the copy here if it wins, else is remembered
    /// (so that a late copy cannot bring it back) where `how` says.
    fn end_as_told(&mut self, how: Reading, id: &SessionId, at: u64) -> Option<SessionEvent> {
        match self.store.get(id) {
            // Created here by a request still running: nobody else can have it.
            Some(_) if self.unannounced.contains(id) => None,
            Some(s) if how.end_wins(s.version(), at) => {
                self.store.end_at(id, at);
                Some(SessionEvent::Destroyed(id.clone()))
            }
            Some(_) => None,
            // Remembered, so that a late copy cannot bring it back (an end known here keeps
            // the higher version: `ReplicaStore::end_at`); after a leave, one known stays.
            None if how == Reading::Merge || self.store.tombstone(id).is_none() => {
                self.store.end_at(id, at);
                None
            }
            None => None,
        }
    }

    /// A change of id member `from` tells of (made at version `at`, 0 if unknown), applied to
    /// the copy held here.
    fn rename_as_told(
        &mut self,
        how: Reading,
        from: MemberId,
        old: &SessionId,
        new: &SessionId,
        at: u64,
    ) -> Option<SessionEvent> {
        // A copy of `old` with changes beyond the version the change of id was made at is news
        // from after it, and stays, where that cannot be the other side of a partition:
        // - Route rebinding keeps the random part, so a session can come back to `old` after
        //   this rename: that return (a joiner's snapshot has it, and a digest made before the
        //   return reached the sender, read after that snapshot, would take it away: kill -9
        //   simulation, quiet seed 46 with every user pinned and rebinding).
        // - After a leave, and on the member whose route `new` has (restarted: it does not
        //   remember making it): the session went on under `old` at a member that never had
        //   the change of id, which failed (a change of id that stands reached every member
        //   before its user went on); renamed here, the copy held a state its origin never
        //   made under `new` (seed 27; 254 and 427 on the restarted renamer, whose state
        //   transfer brought that copy). A healed partition's digest (`Reading::Merge`) names
        //   a change of id made on the other side while this side changed `old`: the rule of
        //   `super::reconcile` decides between them, as for any copy changed on both sides.
        let news = old.same_random_part(new)
            || how == Reading::AfterLeave
            || new.route() == Some(self.route.as_str());
        if news && at > 0 && self.store.get(old).is_some_and(|s| s.version() > at) {
            return None;
        }
        let reverse = self
            .store
            .tombstone(new)
            .filter(|t| t.renamed.as_ref() == Some(old));
        match reverse {
            // Undone here (a dead member's change of id that failed): another member's digest
            // still naming it does not redo it.
            Some(t) if t.undone => return None,
            // The reverse of a change of id made here: a member that undid it (a dead
            // member's failed change of id, always to a new random part) tells it. So does
            // this node: the copy under `old` (the dead member's state) goes, and the digest's
            // entry for `new` asks for the sender's. (The same random part is route rebinding,
            // which can take a session back to an id it had: `ReplicaStore::rename_at`
            // decides.)
            Some(_) if self.store.get(old).is_some() && !old.same_random_part(new) => {
                self.store.undo_rename(new, old);
                return Some(SessionEvent::IdChanged {
                    old: old.clone(),
                    new: new.clone(),
                });
            }
            _ => {}
        }
        let told = (at > 0).then_some(at);
        if self.store.get(old).is_none() || self.store.rename_at(old, new, told) != Outcome::Applied
        {
            return None;
        }
        // The copy keeps the member that brought its version as its writer: if that member
        // left, a late ACCESSED of `from` under `old` would look like the dead member's change
        // of id failing (`DeltaCore::undo_a_dead_members_change_of_id`).
        self.store.note_rename_told_by(old, from);
        Some(SessionEvent::IdChanged {
            old: old.clone(),
            new: new.clone(),
        })
    }
}
