//! What a progressive shift will do, decided before it starts: its thresholds as the operator wrote
//! them, the sequence of shares for the new subset, and the weights at each share.

use std::fmt;
use std::str::FromStr;

/// A percentage as written on the command line: `1%`, `0.5%`.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Percent(f64);

impl Percent {
    pub const ONE: Percent = Percent(1.0);

    /// As a fraction of 1.
    pub fn fraction(self) -> f64 {
        self.0 / 100.0
    }
}

impl FromStr for Percent {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let number = s
            .trim()
            .strip_suffix('%')
            .ok_or_else(|| format!("{s:?}: write a percentage with %, e.g. 1% or 0.5%"))?;
        let p: f64 = number
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: not a number before the %"))?;
        if !(0.0..=100.0).contains(&p) {
            return Err(format!("{s:?}: must be from 0% to 100%"));
        }
        Ok(Percent(p))
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

/// The shares (in percent) the new subset gets, one per step: the multiples of `step` above what it
/// has now, then 100.
pub fn shares(current: u32, step: u32) -> Vec<u32> {
    let step = step.clamp(1, 100);
    let mut out: Vec<u32> = (1..)
        .map(|k| k * step)
        .take_while(|s| *s < 100)
        .filter(|s| *s > current)
        .collect();
    out.push(100);
    out
}

/// The share (whole percent, rounded down) `to` has among `weights`.
pub fn current_share(weights: &[(String, u32)], to: &str) -> u32 {
    let total: u64 = weights.iter().map(|(_, w)| u64::from(*w)).sum();
    let mine: u64 = weights
        .iter()
        .filter(|(s, _)| s == to)
        .map(|(_, w)| u64::from(*w))
        .sum();
    match total {
        0 => 0,
        t => (mine * 100 / t) as u32,
    }
}

/// The weights (summing to 100) that give `to` `share` percent; the rest is split among `from` in
/// proportion to their weights before the shift (`before`), or evenly when none had any. Rounding
/// goes to the largest remainders, earlier subsets first on a tie.
pub fn weights_at(
    share: u32,
    to: &str,
    from: &[String],
    before: &[(String, u32)],
) -> Vec<(String, u32)> {
    let share = share.min(100);
    let rest = 100 - share;
    let had = |s: &str| -> u64 {
        before
            .iter()
            .filter(|(b, _)| b == s)
            .map(|(_, w)| u64::from(*w))
            .sum()
    };
    let mut basis: Vec<u64> = from.iter().map(|s| had(s)).collect();
    if basis.iter().all(|b| *b == 0) {
        basis = vec![1; from.len()];
    }
    let total: u64 = basis.iter().sum();
    let exact: Vec<(u64, u64)> = basis
        .iter()
        .map(|b| {
            let scaled = b * u64::from(rest);
            (scaled / total, scaled % total)
        })
        .collect();
    let mut given: Vec<u32> = exact.iter().map(|(q, _)| *q as u32).collect();
    let mut left = rest - given.iter().sum::<u32>();
    let mut order: Vec<usize> = (0..from.len()).collect();
    order.sort_by(|a, b| exact[*b].1.cmp(&exact[*a].1).then(a.cmp(b)));
    for i in order {
        if left == 0 {
            break;
        }
        given[i] += 1;
        left -= 1;
    }
    let mut out: Vec<(String, u32)> = from.iter().cloned().zip(given).collect();
    out.push((to.to_string(), share));
    out
}

/// `v1=75 v2=25`.
pub fn describe(weights: &[(String, u32)]) -> String {
    weights
        .iter()
        .map(|(s, w)| format!("{s}={w}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(pairs: &[(&str, u32)]) -> Vec<(String, u32)> {
        pairs.iter().map(|(s, w)| (s.to_string(), *w)).collect()
    }

    #[test]
    fn percentages_need_their_sign_and_a_range() {
        let p: Percent = "1%".parse().unwrap();
        assert_eq!(p.fraction(), 0.01);
        assert_eq!(p.to_string(), "1%");
        let p: Percent = "0.5%".parse().unwrap();
        assert_eq!(p.fraction(), 0.005);
        assert_eq!(p.to_string(), "0.5%");
        assert_eq!("0%".parse::<Percent>().unwrap().fraction(), 0.0);
        assert_eq!("100%".parse::<Percent>().unwrap().fraction(), 1.0);
        for bad in ["1", "0.01", "%", "x%", "101%", "-1%", "NaN%"] {
            assert!(bad.parse::<Percent>().is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn shares_climb_by_the_step_to_100() {
        assert_eq!(shares(0, 10), [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]);
        assert_eq!(shares(0, 25), [25, 50, 75, 100]);
        assert_eq!(shares(0, 30), [30, 60, 90, 100]);
        assert_eq!(shares(0, 100), [100]);
        assert_eq!(shares(0, 1).len(), 100);
        assert_eq!(
            shares(25, 10),
            [30, 40, 50, 60, 70, 80, 90, 100],
            "starts above where it is"
        );
        assert_eq!(shares(100, 10), [100]);
    }

    #[test]
    fn the_current_share_is_rounded_down() {
        assert_eq!(current_share(&w(&[("v1", 100)]), "v2"), 0);
        assert_eq!(current_share(&w(&[("v1", 2), ("v2", 1)]), "v2"), 33);
        assert_eq!(current_share(&w(&[("v2", 5)]), "v2"), 100);
        assert_eq!(current_share(&[], "v2"), 0);
    }

    #[test]
    fn the_rest_follows_the_weights_before_the_shift() {
        let from = vec!["v1".to_string()];
        assert_eq!(
            weights_at(25, "v2", &from, &w(&[("v1", 100)])),
            w(&[("v1", 75), ("v2", 25)])
        );
        assert_eq!(
            weights_at(100, "v2", &from, &w(&[("v1", 100)])),
            w(&[("v1", 0), ("v2", 100)])
        );
        let from = vec!["v1".to_string(), "v3".to_string()];
        assert_eq!(
            weights_at(10, "v2", &from, &w(&[("v1", 80), ("v3", 20)])),
            w(&[("v1", 72), ("v3", 18), ("v2", 10)])
        );
        // 75 split 1:1:1 is 25 each; 70 split 1:1:1 rounds to the earlier ones.
        let from = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        assert_eq!(
            weights_at(30, "v2", &from, &[]),
            w(&[("a", 24), ("b", 23), ("c", 23), ("v2", 30)])
        );
        for share in 0..=100 {
            let got = weights_at(share, "v2", &from, &w(&[("a", 3), ("b", 5), ("c", 7)]));
            assert_eq!(got.iter().map(|(_, w)| w).sum::<u32>(), 100, "{got:?}");
        }
    }
}
