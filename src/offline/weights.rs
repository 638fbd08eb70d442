//! Weighing labelled prompts as if out-of-scope ones made up a chosen share of the traffic
//! (`--oos-share`): a labelled file rarely has the mix a deployment sees, and both `fit`'s
//! objective and the rates that mix the two groups (overall accuracy, precision) depend on
//! it. Rates within one group (in-scope accuracy, out-of-scope recall) do not.

use std::str::FromStr;

/// The share of traffic taken to be out of scope: strictly between 0 and 1.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct OosShare(f64);

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ShareError {
    #[error("`{0}` is not a number (the out-of-scope share is a fraction, e.g. 0.2)")]
    NotANumber(String),
    #[error(
        "{0} is not strictly between 0 and 1 (the out-of-scope share is a fraction, e.g. 0.2 \
         for 20%)"
    )]
    OutOfRange(f64),
}

impl OosShare {
    pub fn new(value: f64) -> Result<OosShare, ShareError> {
        if value > 0.0 && value < 1.0 {
            Ok(OosShare(value))
        } else {
            Err(ShareError::OutOfRange(value))
        }
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

impl FromStr for OosShare {
    type Err = ShareError;

    fn from_str(text: &str) -> Result<OosShare, ShareError> {
        let value: f64 = text
            .trim()
            .parse()
            .map_err(|_| ShareError::NotANumber(text.to_string()))?;
        OosShare::new(value)
    }
}

/// Prompts counted by group: out of scope (labelled null) and in scope.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub oos: usize,
    pub in_scope: usize,
}

impl Tally {
    /// Counts prompts given whether each is in scope.
    pub fn of(in_scope: impl IntoIterator<Item = bool>) -> Tally {
        let mut tally = Tally::default();
        for labelled in in_scope {
            tally.add(labelled);
        }
        tally
    }

    pub fn add(&mut self, in_scope: bool) {
        if in_scope {
            self.in_scope += 1;
        } else {
            self.oos += 1;
        }
    }

    pub fn total(self) -> usize {
        self.oos + self.in_scope
    }

    /// The out-of-scope share (`None` with no prompts).
    pub fn oos_share(self) -> Option<f64> {
        (self.total() > 0).then(|| self.oos as f64 / self.total() as f64)
    }
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, other: Tally) {
        self.oos += other.oos;
        self.in_scope += other.in_scope;
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WeightsError {
    #[error(
        "--oos-share weighs the prompts labelled null against the others, and none of the {0} \
         prompts is labelled null (`\"route\": null`)"
    )]
    NoOutOfScope(usize),
    #[error(
        "--oos-share weighs the prompts labelled null against the others, and all {0} prompts \
         are labelled null"
    )]
    NoInScope(usize),
}

/// What one prompt weighs, by group. Unweighted, every prompt weighs 1; with a share `P` of
/// `n_oos` out-of-scope and `n_in` in-scope prompts, an out-of-scope one weighs `P/n_oos`
/// and an in-scope one `(1-P)/n_in`, so the groups total `P` and `1-P`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    oos: f64,
    in_scope: f64,
    /// The weight of an average prompt of the data the weights were made for.
    unit: f64,
    share: Option<OosShare>,
}

impl Weights {
    /// Every prompt counts once.
    pub const UNIFORM: Weights = Weights {
        oos: 1.0,
        in_scope: 1.0,
        unit: 1.0,
        share: None,
    };

    /// The weights for data with `data`'s groups: uniform without a share.
    pub fn new(data: Tally, share: Option<OosShare>) -> Result<Weights, WeightsError> {
        let Some(share) = share else {
            return Ok(Weights::UNIFORM);
        };
        if data.oos == 0 {
            return Err(WeightsError::NoOutOfScope(data.total()));
        }
        if data.in_scope == 0 {
            return Err(WeightsError::NoInScope(data.total()));
        }
        let p = share.get();
        Ok(Weights {
            oos: p / data.oos as f64,
            in_scope: (1.0 - p) / data.in_scope as f64,
            unit: 1.0 / data.total() as f64,
            share: Some(share),
        })
    }

    /// The share weighted as (`None`: unweighted).
    pub fn share(&self) -> Option<f64> {
        self.share.map(OosShare::get)
    }

    /// What a prompt weighs.
    pub fn of(&self, in_scope: bool) -> f64 {
        if in_scope { self.in_scope } else { self.oos }
    }

    /// What an average prompt weighs: 1 unweighted, `1/n` for `n` weighted prompts.
    pub fn unit(&self) -> f64 {
        self.unit
    }

    /// What the prompts of `tally` weigh together. Computed from the counts, so equal
    /// tallies weigh exactly the same (and unweighted, exactly their number).
    pub fn total(&self, tally: Tally) -> f64 {
        tally.oos as f64 * self.oos + tally.in_scope as f64 * self.in_scope
    }

    /// `num`'s weight over `den`'s (`None` when `den` weighs nothing).
    pub fn ratio(&self, num: Tally, den: Tally) -> Option<f64> {
        let den = self.total(den);
        (den > 0.0).then(|| self.total(num) / den)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(p: f64) -> OosShare {
        OosShare::new(p).unwrap()
    }

    #[test]
    fn weights_give_each_group_its_share_exactly() {
        // 100 out-of-scope, 3000 in-scope prompts, weighted as 20% out of scope.
        let data = Tally {
            oos: 100,
            in_scope: 3000,
        };
        let w = Weights::new(data, Some(share(0.2))).unwrap();
        assert_eq!(w.of(false), 0.2 / 100.0);
        assert_eq!(w.of(true), 0.8 / 3000.0);
        assert_eq!(w.unit(), 1.0 / 3100.0);
        assert_eq!(w.share(), Some(0.2));
        assert!((w.total(data) - 1.0).abs() < 1e-12);
        let oos_only = Tally {
            oos: 100,
            in_scope: 0,
        };
        assert!((w.total(oos_only) - 0.2).abs() < 1e-12);
    }

    #[test]
    fn a_weighted_ratio_is_the_mix_of_the_two_groups_rates() {
        // Half the out-of-scope and 90% of the in-scope prompts right: weighted as 20% out
        // of scope, that is 0.2 * 0.5 + 0.8 * 0.9 = 0.82 (unweighted: 2750/3100).
        let data = Tally {
            oos: 100,
            in_scope: 3000,
        };
        let right = Tally {
            oos: 50,
            in_scope: 2700,
        };
        let w = Weights::new(data, Some(share(0.2))).unwrap();
        assert!((w.ratio(right, data).unwrap() - 0.82).abs() < 1e-12);
        assert_eq!(Weights::UNIFORM.ratio(right, data), Some(2750.0 / 3100.0));
        assert_eq!(w.ratio(right, Tally::default()), None);
    }

    #[test]
    fn unweighted_totals_are_exact_counts() {
        let w = Weights::new(
            Tally {
                oos: 3,
                in_scope: 7,
            },
            None,
        )
        .unwrap();
        assert_eq!(w, Weights::UNIFORM);
        assert_eq!(
            w.total(Tally {
                oos: 2,
                in_scope: 5
            }),
            7.0
        );
        assert_eq!(w.unit(), 1.0);
        assert_eq!(w.share(), None);
    }

    #[test]
    fn a_share_needs_both_groups() {
        let p = Some(share(0.2));
        assert_eq!(
            Weights::new(
                Tally {
                    oos: 0,
                    in_scope: 5
                },
                p
            ),
            Err(WeightsError::NoOutOfScope(5))
        );
        assert_eq!(
            Weights::new(
                Tally {
                    oos: 4,
                    in_scope: 0
                },
                p
            ),
            Err(WeightsError::NoInScope(4))
        );
    }

    #[test]
    fn shares_are_parsed_strictly_between_0_and_1() {
        assert_eq!("0.2".parse::<OosShare>(), Ok(share(0.2)));
        assert_eq!(" 0.5 ".parse::<OosShare>().map(OosShare::get), Ok(0.5));
        for bad in ["0", "1", "-0.1", "1.5", "NaN", "inf"] {
            assert!(bad.parse::<OosShare>().is_err(), "{bad}");
        }
        assert_eq!(
            "20%".parse::<OosShare>(),
            Err(ShareError::NotANumber("20%".into()))
        );
    }

    #[test]
    fn tallies_count_the_groups() {
        let t = Tally::of([true, false, true, true]);
        assert_eq!(
            t,
            Tally {
                oos: 1,
                in_scope: 3
            }
        );
        assert_eq!(t.oos_share(), Some(0.25));
        assert_eq!(Tally::default().oos_share(), None);
    }
}
