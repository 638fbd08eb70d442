//! The statistics of the experiments' report: a mean's 95% interval, Welch's t-test for
//! two means, the two-proportion z-test for two rates, and how many requests each side
//! would need to tell a difference of the size seen (80% power at the 5% level). Each is
//! computed from mergeable sums (count, sum, sum of squares), so replicas' counters add up.

use serde::Serialize;

/// The level of every test and interval.
pub const ALPHA: f64 = 0.05;
/// z for a two-sided 95% interval, and for 80% power.
const Z_ALPHA: f64 = 1.959_963_984_540_054;
const Z_POWER: f64 = 0.841_621_233_572_914_3;

/// Count, sum and sum of squares of one metric's observations.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sums {
    pub n: f64,
    pub sum: f64,
    pub sum_sq: f64,
}

impl Sums {
    pub fn mean(&self) -> Option<f64> {
        (self.n > 0.0).then(|| self.sum / self.n)
    }

    /// The sample variance (`None` under two observations).
    pub fn variance(&self) -> Option<f64> {
        if self.n < 2.0 {
            return None;
        }
        let mean = self.sum / self.n;
        Some(((self.sum_sq - self.n * mean * mean) / (self.n - 1.0)).max(0.0))
    }

    /// The mean's 95% interval (Student's t with n - 1 degrees of freedom).
    pub fn interval(&self) -> Option<(f64, f64)> {
        let (mean, variance) = (self.mean()?, self.variance()?);
        let half = t_quantile(1.0 - ALPHA / 2.0, self.n - 1.0) * (variance / self.n).sqrt();
        Some((mean - half, mean + half))
    }
}

/// What a test says of two variants' difference (b minus a).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Test {
    /// `welch_t` or `two_proportion_z`.
    pub test: &'static str,
    pub difference: f64,
    /// The statistic (t or z).
    pub statistic: f64,
    /// Two-sided.
    pub p_value: f64,
    /// `p_value` below 0.05.
    pub significant: bool,
    /// Requests each variant would need to tell a difference of this size with 80% power;
    /// `None` when the difference seen is zero (no number of requests would).
    pub needed_per_variant: Option<f64>,
}

/// Welch's t-test of two means (`None` until each side has two observations).
pub fn welch(a: &Sums, b: &Sums) -> Option<Test> {
    let (ma, mb) = (a.mean()?, b.mean()?);
    let (va, vb) = (a.variance()? / a.n, b.variance()? / b.n);
    let difference = mb - ma;
    let se2 = va + vb;
    let (statistic, p_value) = if se2 > 0.0 {
        let t = difference / se2.sqrt();
        let df = se2 * se2 / (va * va / (a.n - 1.0) + vb * vb / (b.n - 1.0));
        (t, t_two_sided(t, df))
    } else if difference == 0.0 {
        (0.0, 1.0)
    } else {
        // No spread on either side and different means: as certain as it gets.
        (difference.signum() * f64::INFINITY, 0.0)
    };
    let spread = a.variance()? + b.variance()?;
    Some(Test {
        test: "welch_t",
        difference,
        statistic,
        p_value,
        significant: p_value < ALPHA,
        needed_per_variant: needed(spread, difference),
    })
}

/// The two-proportion z-test of `x_a` of `n_a` against `x_b` of `n_b` (`None` while either
/// side has no trials).
pub fn two_proportion(x_a: f64, n_a: f64, x_b: f64, n_b: f64) -> Option<Test> {
    if n_a <= 0.0 || n_b <= 0.0 {
        return None;
    }
    let (pa, pb) = (x_a / n_a, x_b / n_b);
    let pooled = (x_a + x_b) / (n_a + n_b);
    let se = (pooled * (1.0 - pooled) * (1.0 / n_a + 1.0 / n_b)).sqrt();
    let difference = pb - pa;
    let (statistic, p_value) = if se > 0.0 {
        let z = difference / se;
        (z, 2.0 * normal_upper(z.abs()))
    } else {
        (0.0, 1.0)
    };
    Some(Test {
        test: "two_proportion_z",
        difference,
        statistic,
        p_value,
        significant: p_value < ALPHA,
        needed_per_variant: needed(pa * (1.0 - pa) + pb * (1.0 - pb), difference),
    })
}

/// Per-variant sample size to tell `difference` at `ALPHA` with 80% power, given the sum of
/// the two sides' variances.
fn needed(spread: f64, difference: f64) -> Option<f64> {
    (difference != 0.0)
        .then(|| ((Z_ALPHA + Z_POWER).powi(2) * spread / (difference * difference)).ceil())
}

/// P(|T| >= |t|) for Student's t with `df` degrees of freedom.
fn t_two_sided(t: f64, df: f64) -> f64 {
    if !t.is_finite() {
        return 0.0;
    }
    incomplete_beta(df / 2.0, 0.5, df / (df + t * t)).clamp(0.0, 1.0)
}

/// The `p` quantile of Student's t with `df` degrees of freedom (bisection on the CDF).
fn t_quantile(p: f64, df: f64) -> f64 {
    let upper = 1.0 - p;
    let (mut lo, mut hi) = (0.0f64, 1e3f64);
    for _ in 0..200 {
        let mid = (lo + hi) / 2.0;
        if t_two_sided(mid, df) / 2.0 > upper {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo + hi) / 2.0
}

/// P(Z >= z) for the standard normal.
fn normal_upper(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// The complementary error function (Numerical Recipes' Chebyshev fit, error < 1.2e-7).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// The regularized incomplete beta function I_x(a, b) (continued fraction, Lentz).
fn incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front =
        (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_fraction(a, b, x) / a
    } else {
        1.0 - front * beta_fraction(b, a, 1.0 - x) / b
    }
}

fn beta_fraction(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..300 {
        let m = m as f64;
        let m2 = 2.0 * m;
        for aa in [
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ] {
            d = 1.0 + aa * d;
            if d.abs() < TINY {
                d = TINY;
            }
            c = 1.0 + aa / c;
            if c.abs() < TINY {
                c = TINY;
            }
            d = 1.0 / d;
            h *= d * c;
        }
        if (d * c - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = G[0];
    for (i, g) in G.iter().enumerate().skip(1) {
        sum += g / (x + i as f64);
    }
    let t = x + 7.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sums(values: &[f64]) -> Sums {
        Sums {
            n: values.len() as f64,
            sum: values.iter().sum(),
            sum_sq: values.iter().map(|v| v * v).sum(),
        }
    }

    #[test]
    fn the_distributions_match_their_tables() {
        // Student's t: P(|T| >= 2.228) = 0.05 at 10 degrees of freedom; 2.0 gives 0.0734.
        assert!((t_two_sided(2.228_138_85, 10.0) - 0.05).abs() < 1e-6);
        assert!((t_two_sided(2.0, 10.0) - 0.073_388).abs() < 1e-5);
        assert!((t_quantile(0.975, 10.0) - 2.228_138_85).abs() < 1e-6);
        assert!((t_quantile(0.975, 1e6) - Z_ALPHA).abs() < 1e-4);
        assert!((2.0 * normal_upper(1.959_964) - 0.05).abs() < 1e-6);
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn a_mean_and_its_interval() {
        let s = sums(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!(s.mean(), Some(5.0));
        assert!((s.variance().unwrap_or(0.0) - 32.0 / 7.0).abs() < 1e-12);
        let (lo, hi) = s.interval().unwrap_or_default();
        // 5 +- 2.3646 * sqrt(32/7/8)
        assert!((hi - 5.0 - 2.364_624 * (32.0f64 / 56.0).sqrt()).abs() < 1e-5);
        assert!((5.0 - lo - (hi - 5.0)).abs() < 1e-12);
        assert_eq!(sums(&[1.0]).interval(), None);
    }

    #[test]
    fn welch_agrees_with_a_worked_example() {
        // Wikipedia's first example of Welch's test: t = -2.4554, df 24.99, p = 0.02138.
        let a = sums(&[
            27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7,
            21.4,
        ]);
        let b = sums(&[
            27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5,
            24.4,
        ]);
        let test = welch(&b, &a).unwrap_or_else(|| panic!("no test"));
        assert!((test.statistic + 2.455_36).abs() < 1e-4, "{test:?}");
        assert!((test.p_value - 0.021_378).abs() < 1e-5, "{test:?}");
        assert!(test.significant);
    }

    #[test]
    fn two_proportions_and_the_requests_needed() {
        // 10% vs 15% errors over 1,000 each: z = 3.38, p = 0.00072.
        let test = two_proportion(100.0, 1000.0, 150.0, 1000.0).unwrap_or_else(|| panic!());
        assert!((test.statistic - 3.380).abs() < 2e-3, "{test:?}");
        assert!(test.significant);
        // 10% vs 11% over 200 each: not yet; about 14,750 each would tell.
        let test = two_proportion(20.0, 200.0, 22.0, 200.0).unwrap_or_else(|| panic!());
        assert!(!test.significant);
        let needed = test.needed_per_variant.unwrap_or(0.0);
        assert!((14_000.0..15_500.0).contains(&needed), "{needed}");
        assert_eq!(two_proportion(1.0, 0.0, 1.0, 5.0), None);
    }
}
