//! Conversation routing: the route of a chat's last user message, decided with the turns
//! before it. Pure arithmetic over each message's route scores; no model, no index.
//!
//! The conversation's route is tracked like a hidden state (a forward pass of a hidden
//! Markov model over the routes):
//! - a message is *evidence*: for each route, its score minus the message's best score,
//!   divided by `temperature` (0 for the message's favourite, negative for the rest);
//! - the first user message sets the belief (its evidence times `first_turn_weight`: it
//!   usually states what the conversation is about); an assistant message adds its
//!   evidence times `assistant_weight` (it speaks about the route of the turn it answers);
//! - at each later user message the belief first *moves*: with chance `stickiness` the
//!   conversation stays on each route, else it moves to any other one. A message that claims
//!   another route confidently (its best score before the head reaches `switch_score`, and
//!   beats the conversation's current route by `switch_margin`) uses `switch_stickiness`
//!   instead and counts in full; any other user message counts `follow_up_weight`;
//! - a keyword or pattern hit on an earlier user message pins that turn to its route.
//!
//! So a short reply ("Yes, 7 pm works") barely moves a conversation, while a message that
//! confidently names another domain moves it at once.

use crate::config::{ConversationConfig, RouteId};
use crate::route::decide::RouteScore;

/// Evidence against every other route of a turn a keyword or pattern pinned.
const PINNED_EVIDENCE: f64 = 30.0;

/// Who wrote a message. Other roles (system, tool) are not evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker {
    User,
    Assistant,
}

/// One message's scores for every route, by route index (`NEG_INFINITY` for a route with no
/// utterances, which no message can reach).
#[derive(Debug, Clone, PartialEq)]
pub struct MessageScores {
    /// The router's scores (the head applied): the evidence.
    pub routed: Vec<f32>,
    /// The scores before the head: the similarity that decides whether a message claims a
    /// route confidently.
    pub plain: Vec<f32>,
    /// The route a keyword or pattern of the message selects, if any.
    pub pinned: Option<RouteId>,
    /// Whether the message, alone, is routed (an override, or a score that clears its
    /// route's threshold): a conversation has a route once one user message had one.
    pub routed_alone: bool,
}

/// One message of the conversation, in order.
#[derive(Debug, Clone, Copy)]
pub struct Scored<'a> {
    pub speaker: Speaker,
    pub scores: &'a MessageScores,
}

/// The conversation as the last user message found it and left it.
#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    /// The conversation's route when the last user message arrived (`None`: it is the first
    /// user message, or no earlier one was routed).
    pub previous: Option<RouteId>,
    /// The most likely route after the last user message.
    pub current: Option<RouteId>,
    /// Whether the last user message claimed a route other than `previous` confidently.
    pub claimed_switch: bool,
    /// The belief after the last user message: each route's probability, best first.
    pub belief: Vec<RouteScore>,
    /// User messages read, the last one included.
    pub user_turns: usize,
}

/// Follows the conversation `messages` (oldest first; the last user message is the one
/// being routed, and nothing after it counts). `routes` are the config's route ids in
/// index order (the scores' order).
pub fn track(messages: &[Scored], routes: &[RouteId], params: &ConversationConfig) -> Track {
    let last_user = messages.iter().rposition(|m| m.speaker == Speaker::User);
    let Some(last_user) = last_user else {
        return Track {
            previous: None,
            current: None,
            claimed_switch: false,
            belief: Vec::new(),
            user_turns: 0,
        };
    };
    // The routes a message can be scored for, and those an override pinned a turn to
    // (a route with patterns only has no scores but can hold a conversation).
    let last_scores = &messages[last_user].scores.routed;
    let active: Vec<usize> = (0..routes.len().min(last_scores.len()))
        .filter(|&i| {
            last_scores[i].is_finite()
                || messages[..=last_user]
                    .iter()
                    .any(|m| m.scores.pinned.is_some_and(|p| p.index() == i))
        })
        .collect();
    if active.is_empty() {
        // No route can be scored or was pinned (every route has keywords only, say).
        return Track {
            previous: None,
            current: None,
            claimed_switch: false,
            belief: Vec::new(),
            user_turns: messages[..=last_user]
                .iter()
                .filter(|m| m.speaker == Speaker::User)
                .count(),
        };
    }
    let mut belief: Option<Vec<f64>> = None;
    let mut has_route = false;
    let mut previous = None;
    let mut claimed_switch = false;
    let mut user_turns = 0;
    for (at, message) in messages[..=last_user].iter().enumerate() {
        let evidence = evidence(message.scores, &active, params.temperature);
        match (message.speaker, belief.as_mut()) {
            (Speaker::Assistant, None) => {}
            (Speaker::Assistant, Some(b)) => add(b, &evidence, params.assistant_weight),
            (Speaker::User, None) => {
                let weight = f64::from(params.first_turn_weight);
                belief = Some(evidence.iter().map(|e| e * weight).collect());
            }
            (Speaker::User, Some(b)) => {
                let current = argmax(b);
                let claims = claims_another(message.scores, &active, current, params);
                if at == last_user {
                    previous = has_route
                        .then(|| active.get(current).and_then(|&r| routes.get(r)))
                        .flatten()
                        .copied();
                    claimed_switch = claims;
                }
                let stay = if claims {
                    params.switch_stickiness
                } else {
                    params.stickiness
                };
                b.iter_mut().for_each(|x| *x *= f64::from(params.decay));
                transition(b, f64::from(stay));
                let weight = if claims { 1.0 } else { params.follow_up_weight };
                add(b, &evidence, weight);
            }
        }
        if message.speaker == Speaker::User {
            user_turns += 1;
            if at != last_user {
                has_route |= message.scores.routed_alone;
            }
        }
    }
    let belief = belief.unwrap_or_default();
    Track {
        previous,
        current: active
            .get(argmax(&belief))
            .and_then(|&r| routes.get(r))
            .copied(),
        claimed_switch,
        belief: probabilities(&belief, &active, routes),
        user_turns,
    }
}

/// Per active route: 0 for the message's favourite, negative for the rest (in units of
/// `temperature`); a pinned message: 0 for its route, strongly negative for the rest.
fn evidence(scores: &MessageScores, active: &[usize], temperature: f32) -> Vec<f64> {
    if let Some(pinned) = scores.pinned {
        return active
            .iter()
            .map(|&r| {
                if r == pinned.index() {
                    0.0
                } else {
                    -PINNED_EVIDENCE
                }
            })
            .collect();
    }
    let score = |r: usize| f64::from(scores.routed.get(r).copied().unwrap_or(f32::NAN));
    let best = active
        .iter()
        .map(|&r| score(r))
        .filter(|s| s.is_finite())
        .fold(f64::NEG_INFINITY, f64::max);
    let temperature = f64::from(temperature.max(1e-3));
    if !best.is_finite() {
        return vec![0.0; active.len()];
    }
    // A route the message cannot score counts as its least likely scored one.
    let worst = active
        .iter()
        .map(|&r| score(r))
        .filter(|s| s.is_finite())
        .fold(best, f64::min);
    active
        .iter()
        .map(|&r| {
            let s = score(r);
            (if s.is_finite() { s } else { worst } - best) / temperature
        })
        .collect()
}

/// Whether `scores` claim a route other than the active route at `current` confidently.
fn claims_another(
    scores: &MessageScores,
    active: &[usize],
    current: usize,
    params: &ConversationConfig,
) -> bool {
    if let Some(pinned) = scores.pinned {
        return active.get(current) != Some(&pinned.index());
    }
    let plain = |r: usize| scores.plain.get(r).copied().unwrap_or(f32::NEG_INFINITY);
    let Some(best) = active.iter().map(|&r| plain(r)).reduce(f32::max) else {
        return false;
    };
    let here = active.get(current).map_or(f32::NEG_INFINITY, |&r| plain(r));
    best >= params.switch_score && best - here >= params.switch_margin
}

fn add(belief: &mut [f64], evidence: &[f64], weight: f32) {
    for (b, e) in belief.iter_mut().zip(evidence) {
        *b += f64::from(weight) * e;
    }
}

/// One step of the chain: each route keeps `stay` of its probability and spreads the rest
/// evenly over the others (log space in, log space out).
fn transition(belief: &mut [f64], stay: f64) {
    let n = belief.len();
    if n < 2 {
        return;
    }
    let p = softmax(belief);
    let leave = (1.0 - stay) / (n - 1) as f64;
    for (b, p) in belief.iter_mut().zip(p) {
        *b = (stay * p + leave * (1.0 - p)).max(f64::MIN_POSITIVE).ln();
    }
}

fn softmax(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = logits.iter().map(|x| (x - max).exp()).collect();
    let sum: f64 = exp.iter().sum::<f64>().max(f64::MIN_POSITIVE);
    exp.into_iter().map(|e| e / sum).collect()
}

/// The first index of the largest value (ties: the earlier route).
fn argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

fn probabilities(belief: &[f64], active: &[usize], routes: &[RouteId]) -> Vec<RouteScore> {
    let mut out: Vec<RouteScore> = softmax(belief)
        .into_iter()
        .zip(active)
        .filter_map(|(p, &r)| {
            Some(RouteScore {
                route: routes.get(r).copied()?,
                score: p as f32,
            })
        })
        .collect();
    out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.route.cmp(&b.route)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three routes; `routed` doubles as `plain`.
    fn msg(scores: [f32; 3], routed_alone: bool) -> MessageScores {
        MessageScores {
            routed: scores.to_vec(),
            plain: scores.to_vec(),
            pinned: None,
            routed_alone,
        }
    }

    fn user(scores: &MessageScores) -> Scored<'_> {
        Scored {
            speaker: Speaker::User,
            scores,
        }
    }

    fn assistant(scores: &MessageScores) -> Scored<'_> {
        Scored {
            speaker: Speaker::Assistant,
            scores,
        }
    }

    fn params() -> ConversationConfig {
        ConversationConfig::default()
    }

    const ROUTES: [RouteId; 3] = [RouteId::at(0), RouteId::at(1), RouteId::at(2)];

    fn track(messages: &[Scored], params: &ConversationConfig) -> Track {
        super::track(messages, &ROUTES, params)
    }

    #[test]
    fn a_first_message_is_decided_by_its_own_scores() {
        let first = msg([0.2, 0.7, 0.1], true);
        let t = track(&[user(&first)], &params());
        assert_eq!(t.previous, None);
        assert_eq!(t.current, Some(RouteId::at(1)));
        assert_eq!(t.user_turns, 1);
        assert!(!t.claimed_switch);
        assert_eq!(t.belief[0].route, RouteId::at(1));
        let total: f32 = t.belief.iter().map(|b| b.score).sum();
        assert!((total - 1.0).abs() < 1e-5, "{total}");
    }

    #[test]
    fn a_vague_follow_up_stays_on_the_conversations_route() {
        let first = msg([0.7, 0.2, 0.1], true);
        let answer = msg([0.4, 0.2, 0.1], false);
        // "Yes, that works": weakly closer to route 2, below `switch_score`.
        let reply = msg([0.20, 0.15, 0.30], false);
        let t = track(&[user(&first), assistant(&answer), user(&reply)], &params());
        assert_eq!(t.previous, Some(RouteId::at(0)));
        assert_eq!(t.current, Some(RouteId::at(0)));
        assert!(!t.claimed_switch);
    }

    #[test]
    fn a_confident_message_for_another_route_switches() {
        let first = msg([0.7, 0.2, 0.1], true);
        let answer = msg([0.5, 0.1, 0.1], false);
        let switch = msg([0.2, 0.75, 0.1], true);
        let t = track(
            &[user(&first), assistant(&answer), user(&switch)],
            &params(),
        );
        assert_eq!(t.previous, Some(RouteId::at(0)));
        assert_eq!(t.current, Some(RouteId::at(1)));
        assert!(t.claimed_switch);
    }

    #[test]
    fn stickiness_one_keeps_a_clear_route_and_zero_follows_the_last_message() {
        let first = msg([0.9, 0.2, 0.1], true);
        let switch = msg([0.2, 0.75, 0.1], true);
        let msgs = [user(&first), user(&switch)];
        let stuck = ConversationConfig {
            stickiness: 1.0,
            switch_stickiness: 1.0,
            ..params()
        };
        assert_eq!(track(&msgs, &stuck).current, Some(RouteId::at(0)));
        let free = ConversationConfig {
            stickiness: 0.0,
            switch_stickiness: 0.0,
            follow_up_weight: 1.0,
            ..params()
        };
        assert_eq!(track(&msgs, &free).current, Some(RouteId::at(1)));
    }

    #[test]
    fn assistant_messages_are_evidence_for_the_turn_they_answer() {
        // The first message hesitates between 0 and 1; the assistant's answer settles it.
        let first = msg([0.50, 0.52, 0.1], true);
        let answer = msg([0.8, 0.1, 0.1], false);
        let reply = msg([0.3, 0.3, 0.3], false);
        let with = track(&[user(&first), assistant(&answer), user(&reply)], &params());
        assert_eq!(with.current, Some(RouteId::at(0)));
        let deaf = ConversationConfig {
            assistant_weight: 0.0,
            ..params()
        };
        let without = track(&[user(&first), assistant(&answer), user(&reply)], &deaf);
        assert_eq!(without.current, Some(RouteId::at(1)));
    }

    #[test]
    fn a_pinned_turn_fixes_the_route_and_no_previous_route_without_a_routed_turn() {
        let mut pinned = msg([0.1, 0.1, 0.6], true);
        pinned.pinned = Some(RouteId::at(0));
        let reply = msg([0.2, 0.3, 0.25], false);
        let t = track(&[user(&pinned), user(&reply)], &params());
        assert_eq!(t.previous, Some(RouteId::at(0)));
        assert_eq!(t.current, Some(RouteId::at(0)));
        // An earlier turn that nothing routed gives the conversation no route yet.
        let unrouted = msg([0.1, 0.2, 0.15], false);
        let t = track(&[user(&unrouted), user(&reply)], &params());
        assert_eq!(t.previous, None);
    }

    #[test]
    fn routes_without_utterances_are_never_chosen_and_nothing_is_nan() {
        let first = MessageScores {
            routed: vec![0.5, f32::NEG_INFINITY, 0.4],
            plain: vec![0.5, f32::NEG_INFINITY, 0.4],
            pinned: None,
            routed_alone: true,
        };
        let reply = MessageScores {
            routed: vec![0.1, f32::NEG_INFINITY, 0.6],
            plain: vec![0.1, f32::NEG_INFINITY, 0.6],
            pinned: None,
            routed_alone: true,
        };
        let t = track(&[user(&first), assistant(&first), user(&reply)], &params());
        assert_eq!(t.belief.len(), 2);
        assert!(t.belief.iter().all(|b| b.score.is_finite()));
        assert_eq!(t.current, Some(RouteId::at(2)));
    }

    #[test]
    fn a_turn_pinned_to_a_route_without_utterances_holds_the_conversation() {
        let mut pinned = MessageScores {
            routed: vec![0.3, f32::NEG_INFINITY, 0.2],
            plain: vec![0.3, f32::NEG_INFINITY, 0.2],
            pinned: Some(RouteId::at(1)),
            routed_alone: true,
        };
        let answer = msg([0.2, 0.0, 0.1], false);
        let mut reply = msg([0.24, 0.0, 0.1], false);
        reply.routed[1] = f32::NEG_INFINITY;
        reply.plain[1] = f32::NEG_INFINITY;
        let t = track(
            &[user(&pinned), assistant(&answer), user(&reply)],
            &params(),
        );
        assert_eq!(t.previous, Some(RouteId::at(1)));
        assert_eq!(t.current, Some(RouteId::at(1)));
        assert!(t.belief.iter().all(|b| b.score.is_finite()));
        // Vague replies for as many turns as a conversation reads: it is still there.
        let mut long = vec![user(&pinned)];
        for _ in 0..params().history_turns {
            long.push(user(&reply));
        }
        assert_eq!(track(&long, &params()).current, Some(RouteId::at(1)));
        pinned.pinned = None;
        let t = track(&[user(&pinned), user(&reply)], &params());
        assert_eq!(t.current, Some(RouteId::at(0)));
    }

    #[test]
    fn no_scorable_route_gives_no_conversation_route_and_no_panic() {
        let none = MessageScores {
            routed: vec![f32::NEG_INFINITY; 3],
            plain: vec![f32::NEG_INFINITY; 3],
            pinned: None,
            routed_alone: false,
        };
        let mut keyword = none.clone();
        keyword.pinned = Some(RouteId::at(2));
        keyword.routed_alone = true;
        let t = track(&[user(&none), user(&none)], &params());
        assert_eq!((t.previous, t.current, t.user_turns), (None, None, 2));
        assert!(t.belief.is_empty());
        // A keyword-only route a turn was pinned to holds the conversation.
        let t = track(&[user(&keyword), user(&none)], &params());
        assert_eq!(
            (t.previous, t.current),
            (Some(RouteId::at(2)), Some(RouteId::at(2)))
        );
    }

    #[test]
    fn no_user_message_no_route() {
        let answer = msg([0.8, 0.1, 0.1], false);
        let t = track(&[assistant(&answer)], &params());
        assert_eq!((t.current, t.previous, t.user_turns), (None, None, 0));
    }
}
