//! Deciding a lane's batch against its document: each mutation in order,
//! against the state the one before left (`fold`), and what the batch then
//! writes (`lane_commit`) and records.

use super::*;

/// What became of one mutation of a lane.
enum Settled {
    Ruled(Box<Ruling>),
    /// Kept in the quarantine with this reason; `slot`: in a new slot.
    Kept {
        reason: String,
        slot: bool,
    },
    Refused(Refusal),
}

struct Ruling {
    reply: Decision,
    verdict: Verdict,
    version_after: u64,
    conflict: Option<ConflictRecord>,
}

/// A batch folded over its document: each mutation's fate, and the state
/// the last one left.
pub(super) struct Folded {
    settled: Vec<Settled>,
    end: Document,
}

/// Decides every mutation of the batch in order, each against the state
/// the previous one left: chaining own writes, quarantining what a failed
/// handler could not decide, discarding what an operator discards.
pub(super) async fn fold(
    inner: &Inner,
    config: &CollectionConfig,
    doc: &DocKey,
    current: Document,
    batch: &[LaneEntry],
    dispatched_at: Duration,
    parked: &AtomicBool,
) -> Folded {
    let doc_label = format!("{}/{}", doc.collection, doc.key);
    let mut state = current;
    let mut settled = Vec::with_capacity(batch.len());
    // The versions this lane's mutations wrote, and by whom.
    let mut in_lane: Vec<(u64, String)> = Vec::new();
    for entry in batch {
        let m = &entry.mutation;
        let (step, chained_from) =
            decide_one(inner, config, doc, &state, entry, &in_lane, parked).await;
        if !matches!(
            entry.origin,
            Origin::Quarantine(QuarantineAction::Discard) | Origin::Expired
        ) {
            let at_ms = inner.clock.now_ms();
            inner.shadows.offer(config, &state, m, &step, at_ms);
        }
        invariant::hold(
            step.after.version >= state.version,
            "versions never go backwards",
        );
        let mut step = step;
        if step.handler_failed
            && let Some(fate) = handler_failed(inner, config, entry, &mut step.verdict)
        {
            settled.push(fate);
            continue;
        }
        // Rendered now, from the document the mutation left (its answer
        // carries it), before that document becomes the next one's.
        let frame = reply::Frame {
            id: &m.id,
            doc_label: &doc_label,
            score: Some(entry.score),
            queued_ms: dispatched_at
                .saturating_sub(entry.admitted_at)
                .as_secs_f64()
                * 1000.0,
            chained_from,
        };
        let (ruling, after) = match rule(inner, doc, &state, &frame, step) {
            Ok(ruled) => ruled,
            Err(refusal) => {
                settled.push(Settled::Refused(refusal));
                continue;
            }
        };
        if config.chain_own_writes && after.version > state.version {
            in_lane.push((after.version, m.client_name().to_owned()));
        }
        settled.push(Settled::Ruled(Box::new(ruling)));
        state = after;
    }
    Folded {
        settled,
        end: state,
    }
}

/// Decides one mutation against `state`: an operator's discard, or the
/// handler's decision, rebased first when it chains onto its client's own
/// writes (then also the base it chained from).
async fn decide_one(
    inner: &Inner,
    config: &CollectionConfig,
    doc: &DocKey,
    state: &Document,
    entry: &LaneEntry,
    in_lane: &[(u64, String)],
    parked: &AtomicBool,
) -> (Step, Option<u64>) {
    let m = &entry.mutation;
    if entry.origin == Origin::Quarantine(QuarantineAction::Discard) {
        return (inner.resolver.discard(state, m, config, "discarded"), None);
    }
    if entry.origin == Origin::Expired {
        let expired = inner
            .resolver
            .discard(state, m, config, super::super::staging::EXPIRED);
        return (expired, None);
    }
    let chained_from = match m.base_version {
        Some(base) if config.chain_own_writes && base < state.version => {
            chain::only_own_writes(inner, doc, base, state.version, m.client_name(), in_lane)
                .await
                .then_some(base)
        }
        _ => None,
    };
    // Chained: decided as if based on the current version.
    let rebased = chained_from.map(|_| Mutation {
        base_version: Some(state.version),
        ..m.clone()
    });
    let m = rebased.as_ref().unwrap_or(m);
    if config.handler.is_custom() && m.base_version.is_some_and(|b| b != state.version) {
        park(inner, parked);
    }
    (inner.resolver.decide(state, m, config).await, chained_from)
}

/// The fate of a mutation whose custom handler failed, by the collection's
/// policy, logged with it: kept in the quarantine, or refused or rejected
/// when the quarantine is full. `None`: it goes on as the rejection
/// `verdict` says (reworded when the quarantine was full).
fn handler_failed(
    inner: &Inner,
    config: &CollectionConfig,
    entry: &LaneEntry,
    verdict: &mut Verdict,
) -> Option<Settled> {
    let m = &entry.mutation;
    let reason = match &*verdict {
        Verdict::Outcome {
            conflict: Some(c), ..
        } => c.reason.clone().unwrap_or_default(),
        _ => String::new(),
    };
    let failed = |fate: &str| {
        warn!(
            id = %m.id,
            collection = %m.doc.collection,
            key = %m.doc.key,
            handler = config.handler.name(),
            error = reason.as_str(),
            "the conflict handler failed; the mutation is {fate}"
        );
    };
    if config.on_handler_failure != OnHandlerFailure::Quarantine {
        failed("rejected");
        return None;
    }
    // A failed handler wrote nothing: the state stays as it was.
    if entry.origin.is_from_quarantine() {
        failed("kept in the quarantine");
        return Some(Settled::Kept {
            reason,
            slot: false,
        });
    }
    if inner.quarantine.reserve() {
        failed("quarantined");
        return Some(Settled::Kept { reason, slot: true });
    }
    if !entry.origin.is_accepted() {
        failed("refused: the quarantine is full");
        return Some(Settled::Refused(quarantine_full(&reason)));
    }
    // Accepted asynchronously, nobody waits to resend it: rejected as
    // without a quarantine.
    failed("rejected: the quarantine is full");
    if let Verdict::Outcome {
        conflict: Some(c), ..
    } = verdict
    {
        c.reason = Some(format!("{reason} (the quarantine is full)"));
    }
    None
}

/// Renders a decided mutation's answer under the document-size bound: a
/// document over it is refused, or, when a handler made it, the handler's
/// rejection. Returns the ruling and the document the mutation leaves.
fn rule(
    inner: &Inner,
    doc: &DocKey,
    state: &Document,
    frame: &reply::Frame<'_>,
    step: Step,
) -> Result<(Ruling, Document), Refusal> {
    let Step {
        mut verdict,
        mut after,
        mut conflict,
        ..
    } = step;
    let mut reply = frame.render(&verdict, after.item.as_ref());
    // The answer carries the document, so it is no shorter: only a long
    // answer needs the document measured.
    let max = inner.config.document_bytes_max;
    if after.version > state.version && reply.body.len() > max {
        let bytes = after.item.as_ref().map_or(0, encoded_len);
        if bytes > max {
            let Some(record) = conflict.as_mut() else {
                return Err(document_too_large(doc, bytes, max));
            };
            // A handler made it: rejected, as any handler's refusal.
            let reason = crate::resolve::result_too_large(&record.handler, bytes, max);
            record.resolution = Resolution::Rejected;
            record.reason.clone_from(&reason);
            record.result = serde_json::Value::Null;
            verdict = Verdict::Outcome {
                outcome: Outcome::Rejected,
                version: state.version,
                conflict: Some(ConflictInfo {
                    base_version: record.base_version,
                    server_version: record.server_version,
                    handler: record.handler.clone(),
                    reason: Some(reason),
                }),
            };
            after = state.clone();
            reply = frame.render(&verdict, after.item.as_ref());
        }
    }
    let ruling = Ruling {
        reply,
        version_after: after.version,
        verdict,
        conflict,
    };
    Ok((ruling, after))
}

/// The lane's commit (its end state, replies, quarantine entries and
/// history records) and the answers it will give once it commits.
pub(super) fn lane_commit(
    doc: &DocKey,
    current_version: u64,
    folded: Folded,
    batch: &[LaneEntry],
    decided_ms: i64,
    dispatched_at: Duration,
) -> (LaneCommit, BatchEnd) {
    let mut end = BatchEnd::default();
    let mut stored = Vec::with_capacity(batch.len());
    let mut quarantine = Vec::new();
    let mut before = current_version;
    for (i, (entry, settled)) in batch.iter().zip(folded.settled).enumerate() {
        let m = &entry.mutation;
        let ruling = match settled {
            Settled::Ruled(ruling) => *ruling,
            Settled::Kept { reason, slot } => {
                end.kept += 1;
                end.new_slots += usize::from(slot);
                end.answers.push(quarantined_answer(&m.id, &reason));
                quarantine.push(quarantined(doc, entry, reason, decided_ms));
                continue;
            }
            Settled::Refused(refusal) => {
                end.answers.push(Answer::Refused(refusal));
                continue;
            }
        };
        stored.push(StoredReply {
            client: m.client_name().to_owned(),
            was_accepted: entry.origin.is_accepted(),
            was_quarantined: entry.origin.is_from_quarantine(),
            id: m.id.clone(),
            fingerprint: m.fingerprint,
            decision: ruling.reply.clone(),
            at_ms: decided_ms,
        });
        let timing = (decided_ms, dispatched_at);
        end.history
            .mutations
            .push(mutation_record(doc, entry, &ruling, before, timing));
        end.decided_at.push(i);
        before = ruling.version_after;
        if let Some(conflict) = ruling.conflict {
            end.history.conflicts.push(conflict);
        }
        end.answers.push(Answer::Decided(ruling.reply));
    }
    // A lane that wrote nothing leaves the document as it was read (and
    // still checks its version).
    let (write, unchanged) = if folded.end.version != current_version {
        (Some(folded.end), None)
    } else {
        (None, Some(folded.end))
    };
    let commit = LaneCommit {
        doc: doc.clone(),
        expected_version: current_version,
        write,
        replies: stored,
        quarantine,
        at_ms: decided_ms,
        history: std::mem::take(&mut end.history),
        fence: None,
    };
    end.unchanged = unchanged;
    (commit, end)
}

/// The quarantine's entry for a mutation its failed handler could not decide.
fn quarantined(doc: &DocKey, entry: &LaneEntry, reason: String, at_ms: i64) -> Quarantined {
    let m = &entry.mutation;
    Quarantined {
        client: m.client_name().to_owned(),
        id: m.id.clone(),
        fingerprint: m.fingerprint,
        doc: doc.clone(),
        mutation: m.to_json(),
        reason,
        score: entry.score,
        at_ms,
        was_accepted: entry.origin.is_accepted(),
    }
}

/// The history's record of a decided mutation; `timing`: when it was
/// decided (ms since the epoch) and dispatched (on the engine's clock).
fn mutation_record(
    doc: &DocKey,
    entry: &LaneEntry,
    ruling: &Ruling,
    version_before: u64,
    (decided_ms, dispatched_at): (i64, Duration),
) -> MutationRecord {
    let m = &entry.mutation;
    let outcome = match &ruling.verdict {
        Verdict::Outcome { outcome, .. } => RecordedOutcome::from(*outcome),
        Verdict::NotFound { .. } => RecordedOutcome::NotFound,
    };
    let queued = dispatched_at.saturating_sub(entry.admitted_at);
    MutationRecord {
        id: m.id.clone(),
        client: m.client_name().to_owned(),
        doc: doc.clone(),
        op: m.op,
        fields: m.fields_touched(),
        base_version: m.base_version,
        version_before,
        version_after: ruling.version_after,
        outcome,
        conflict: ruling.conflict.is_some(),
        score: Some(entry.score),
        ts_ms: m.ts_ms,
        received_ms: entry.received_ms,
        decided_ms,
        queued_us: u64::try_from(queued.as_micros()).unwrap_or(u64::MAX),
        lane_waiting: entry.lane_waiting as u64,
    }
}
