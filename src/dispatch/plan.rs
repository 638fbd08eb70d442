//! The targets of one request, in the order they are tried: the route's targets (or the one
//! backend named) that may receive its data class, ordered by the route's strategy; of
//! those, the ones usable now, or when every one is cooling down, the first to recover,
//! waited for if that is soon enough.

use super::balance::Balancer;
use super::classes::Classed;
use super::health::{Availability, Board};
use super::{ChatRequest, Destination, DispatchError, MAX_RECOVERY_WAIT};
use crate::config::{BackendId, Config, StickyBy, Strategy};
use crate::quota::demand::Demand;
use std::time::Instant;

/// The targets to try for `request`, best first.
pub async fn targets(
    request: &ChatRequest,
    config: &Config,
    health: &Board,
    balancer: &Balancer,
) -> Result<Vec<BackendId>, DispatchError> {
    let (targets, route, strategy) = match request.destination {
        Destination::Backend(b) => (vec![b], None, Strategy::Fallback),
        Destination::Route(r) => {
            let d = &config.route(r).dispatch;
            (d.targets.clone(), Some(r), d.strategy)
        }
    };
    let eligible = eligible(&targets, config, request.data_class.as_ref())?;
    let eligible = fitting(&eligible, config, &request.demand)?;
    let client = request.client.sticky_key(StickyBy::User);
    let mut ranked = balancer.order(
        strategy,
        route,
        &eligible,
        &config.backends,
        health.all(),
        client.as_deref(),
    );
    if strategy == Strategy::Cheapest {
        // Stable: targets of one price keep the order written.
        ranked.sort_by(|&a, &b| {
            let price = |t| request.demand.max_usd_on(config.backend(t));
            price(a).total_cmp(&price(b))
        });
    }
    // An experiment's variant replaces the strategy's first pick; if it cannot be used
    // (its data class, a cooldown), the request falls back like from any target.
    if let Some(at) = request
        .variant
        .and_then(|v| ranked.iter().position(|&t| t == v))
    {
        let variant = ranked.remove(at);
        ranked.insert(0, variant);
    }
    usable_now(&ranked, config, health, Instant::now()).await
}

/// The targets that may receive data class `class`; none is an error only for a classified
/// request (an unclassified one goes anywhere).
fn eligible(
    targets: &[BackendId],
    config: &Config,
    class: Option<&Classed>,
) -> Result<Vec<BackendId>, DispatchError> {
    let eligible: Vec<BackendId> = targets
        .iter()
        .copied()
        .filter(|&t| config.backend(t).accepts(class.map(|c| c.class.as_str())))
        .collect();
    match class {
        Some(class) if eligible.is_empty() => {
            let names: Vec<&str> = targets
                .iter()
                .map(|&t| config.backend(t).name.as_str())
                .collect();
            Err(DispatchError::NotEligible {
                class: class.class.clone(),
                reason: format!(
                    "it was set by {}, and none of the targets ({}) accepts it in `data_classes`",
                    class.because,
                    names.join(", ")
                ),
            })
        }
        _ => Ok(eligible),
    }
}

/// The targets whose context window holds the request (a target that cannot is skipped
/// without a round trip); none is an error.
fn fitting(
    targets: &[BackendId],
    config: &Config,
    demand: &Demand,
) -> Result<Vec<BackendId>, DispatchError> {
    let fitting: Vec<BackendId> = targets
        .iter()
        .copied()
        .filter(|&t| demand.fits(config.backend(t)))
        .collect();
    if fitting.is_empty() && !targets.is_empty() {
        let largest = targets
            .iter()
            .filter_map(|&t| config.backend(t).context_window)
            .max()
            .unwrap_or(0);
        return Err(DispatchError::TooLong {
            tokens: demand
                .prompt_tokens
                .saturating_add(demand.max_output.unwrap_or(0) / demand.choices.max(1)),
            largest,
        });
    }
    Ok(fitting)
}

/// The `ranked` targets usable at `now`, in order (a full one, at `max_concurrent`, or one
/// cooling down is left out). When none is: the first to recover, once it has, if that is
/// within `MAX_RECOVERY_WAIT`.
async fn usable_now(
    ranked: &[BackendId],
    config: &Config,
    health: &Board,
    now: Instant,
) -> Result<Vec<BackendId>, DispatchError> {
    let usable: Vec<BackendId> = ranked
        .iter()
        .copied()
        .filter(|&b| health.usable(b, config.backend(b).max_concurrent, now))
        .collect();
    if !usable.is_empty() {
        return Ok(usable);
    }
    let soonest = ranked
        .iter()
        .map(|&b| match health.get(b).availability(now) {
            Availability::Cooling(until) => (until, b),
            _ => (now, b),
        })
        .min_by_key(|(until, _)| *until);
    match soonest {
        Some((until, b)) if until.saturating_duration_since(now) <= MAX_RECOVERY_WAIT => {
            tokio::time::sleep_until(until.into()).await;
            Ok(vec![b])
        }
        Some((until, _)) => Err(DispatchError::AllCooling {
            retry_after: until.saturating_duration_since(now),
        }),
        None => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn config() -> Config {
        let mut yaml = String::from("backends:\n");
        for name in ["a", "b", "c"] {
            yaml.push_str(&format!(
                "  - name: {name}\n    url: http://127.0.0.1:1/v1\n    model: m\n"
            ));
        }
        // Only `c` may receive `pii`.
        yaml.push_str("    data_classes: [public, pii]\n");
        yaml.push_str("routes:\n  - name: r\n    utterances: [x]\n    targets: [a, b, c]\n");
        Config::parse(&yaml, "t", std::path::Path::new(".")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn request(destination: Destination) -> ChatRequest {
        ChatRequest {
            body: Arc::default(),
            destination,
            data_class: None,
            size: 0,
            demand: Demand::default(),
            ticket: None,
            decision: None,
            client: Default::default(),
            variant: None,
        }
    }

    #[tokio::test]
    async fn a_target_cooling_down_is_left_out_while_another_is_usable() {
        let (config, health, balancer) = (config(), Board::new(3), Balancer::new(1));
        health
            .get(BackendId::at(1))
            .rate_limited(Instant::now(), Some(Duration::from_secs(60)));
        let route = request(Destination::Route(crate::config::RouteId::at(0)));
        let planned = targets(&route, &config, &health, &balancer).await;
        assert_eq!(planned.ok(), Some(vec![BackendId::at(0), BackendId::at(2)]));
    }

    #[tokio::test]
    async fn with_every_target_cooling_for_long_the_plan_says_when_to_come_back() {
        let (config, health, balancer) = (config(), Board::new(3), Balancer::new(1));
        health
            .get(BackendId::at(2))
            .rate_limited(Instant::now(), Some(Duration::from_secs(60)));
        let named = request(Destination::Backend(BackendId::at(2)));
        match targets(&named, &config, &health, &balancer).await {
            Err(DispatchError::AllCooling { retry_after }) => {
                assert!(retry_after > Duration::from_secs(50), "{retry_after:?}");
            }
            other => panic!("{:?}", other.map_err(|e| e.to_string())),
        }
    }

    #[test]
    fn a_class_no_target_accepts_is_refused_naming_the_targets() {
        let config = config();
        let class = Classed {
            class: "pii".into(),
            because: "the header".into(),
        };
        let ids = [BackendId::at(0), BackendId::at(1)];
        match eligible(&ids, &config, Some(&class)) {
            Err(DispatchError::NotEligible { class, reason }) => {
                assert_eq!(class, "pii");
                assert!(reason.contains("(a, b)"), "{reason}");
            }
            other => panic!("{:?}", other.map_err(|e| e.to_string())),
        }
        assert_eq!(eligible(&ids, &config, None).ok(), Some(ids.to_vec()));
        let all = [BackendId::at(0), BackendId::at(1), BackendId::at(2)];
        assert_eq!(
            eligible(&all, &config, Some(&class)).ok(),
            Some(vec![BackendId::at(2)])
        );
    }
}
