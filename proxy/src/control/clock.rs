//! How far this machine's clock is from the control plane's, measured on every certificate the control
//! plane issues: it sets `notBefore` back by exactly [`CLOCK_SKEW_ALLOWANCE`] from its own clock, so
//! `notBefore + allowance` is the control plane's time of issue (to the second). Within the leeway the
//! offset is applied to every certificate check, so a small skew changes nothing; beyond it the
//! certificate is refused with an error that names the clock, and the proxy retries.

use std::time::{Duration, SystemTime};
use weft_certs::ca::CLOCK_SKEW_ALLOWANCE;
use weft_certs::Credential;

/// How far this machine's clock may be from the control plane's, either way.
pub const CLOCK_SKEW_LEEWAY: Duration = CLOCK_SKEW_ALLOWANCE;

/// This machine's clock against the control plane's, around one certificate request. With clocks in
/// step the control plane signs between the request leaving and the answer arriving; only a signing
/// time outside that window is skew, so a slow answer is not mistaken for a clock ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Skew {
    /// The control plane's clock when it signed (`notBefore` + the allowance, whole seconds).
    pub issued_at: SystemTime,
    /// This machine's clock when the request was sent.
    pub sent_at: SystemTime,
    /// This machine's clock when the certificate arrived.
    pub received_at: SystemTime,
}

impl Skew {
    /// The skew a certificate requested at `sent_at` and received at `received_at` shows.
    pub fn of(cred: &Credential, sent_at: SystemTime, received_at: SystemTime) -> Skew {
        Skew {
            issued_at: cred.not_before() + CLOCK_SKEW_ALLOWANCE,
            sent_at,
            received_at,
        }
    }

    /// How far ahead this machine's clock is (zero if behind). The signing time is truncated to the
    /// second, hence the second added.
    pub fn ahead(&self) -> Duration {
        self.sent_at
            .duration_since(self.issued_at + Duration::from_secs(1))
            .unwrap_or(Duration::ZERO)
    }

    /// How far behind this machine's clock is (zero if ahead).
    pub fn behind(&self) -> Duration {
        self.issued_at
            .duration_since(self.received_at)
            .unwrap_or(Duration::ZERO)
    }

    /// Seconds ahead (negative: behind), for the gauge.
    pub fn seconds(&self) -> i64 {
        let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        secs(self.ahead()) - secs(self.behind())
    }

    /// An error when the skew is beyond the leeway.
    pub fn check(&self) -> Result<(), ClockSkew> {
        if self.ahead() > CLOCK_SKEW_LEEWAY || self.behind() > CLOCK_SKEW_LEEWAY {
            return Err(ClockSkew::Measured(*self));
        }
        Ok(())
    }
}

/// This machine's clock is too far from the control plane's for certificates to work.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClockSkew {
    #[error(
        "clock skew: this machine's clock is {} {} the control plane's (it signed at {} by its clock; \
         this machine's clock said {}); the leeway is {} s either way: check the clock (NTP)",
        humanize(.0.ahead().max(.0.behind())),
        if .0.ahead() > Duration::ZERO { "ahead of" } else { "behind" },
        rfc3339(.0.issued_at), rfc3339(.0.received_at), CLOCK_SKEW_LEEWAY.as_secs()
    )]
    Measured(Skew),
    /// The control plane's own certificate is outside its validity by this machine's clock.
    #[error(
        "clock skew: the control plane's certificate is not valid before {}, and this machine's clock \
         says {}: check the clock (NTP)",
        rfc3339(*.not_before), rfc3339(*.now)
    )]
    NotYetValid {
        not_before: SystemTime,
        now: SystemTime,
    },
    #[error(
        "clock skew?: the control plane's certificate expired at {} by this machine's clock, which says \
         {}; the control plane renews it while it runs, so this machine's clock is probably ahead: \
         check the clock (NTP)",
        rfc3339(*.not_after), rfc3339(*.now)
    )]
    Expired {
        not_after: SystemTime,
        now: SystemTime,
    },
}

impl ClockSkew {
    /// The clock-skew reading of a refusal of the control plane's certificate, if it is about time.
    pub fn of_verify_error(e: &weft_certs::VerifyError, now: SystemTime) -> Option<ClockSkew> {
        match e {
            weft_certs::VerifyError::NotYetValid { not_before } => Some(ClockSkew::NotYetValid {
                not_before: *not_before,
                now,
            }),
            weft_certs::VerifyError::Expired { not_after } => Some(ClockSkew::Expired {
                not_after: *not_after,
                now,
            }),
            _ => None,
        }
    }
}

fn humanize(d: Duration) -> String {
    format!("{} s", d.as_secs())
}

pub use weft_certs::rfc3339;

#[cfg(test)]
mod tests {
    use super::*;

    fn skew(ahead_secs: i64) -> Skew {
        let issued_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let received_at = if ahead_secs >= 0 {
            issued_at + Duration::from_secs(ahead_secs.unsigned_abs())
        } else {
            issued_at - Duration::from_secs(ahead_secs.unsigned_abs())
        };
        // The signing time as a certificate carries it: truncated to the second.
        let truncated = if ahead_secs >= 0 {
            issued_at - Duration::from_secs(1)
        } else {
            issued_at
        };
        Skew {
            issued_at: truncated,
            sent_at: received_at,
            received_at,
        }
    }

    #[test]
    fn within_the_leeway_is_fine_and_beyond_it_names_the_clock() {
        for secs in [0, 30, -30, 60, -60] {
            assert!(skew(secs).check().is_ok(), "{secs}");
            assert_eq!(skew(secs).seconds(), secs);
        }
        let e = skew(600).check().unwrap_err().to_string();
        assert!(
            e.contains("600 s ahead of") && e.contains("check the clock (NTP)"),
            "{e}"
        );
        let e = skew(-600).check().unwrap_err().to_string();
        assert!(e.contains("600 s behind"), "{e}");
        assert!(e.contains("2027-01-15T08:00:00Z"), "{e}");
    }

    #[test]
    fn a_slow_answer_is_not_skew() {
        let sent_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        // Signed 0.4 s after sending (truncated to the second), answered 4 s later.
        let s = Skew {
            issued_at: sent_at,
            sent_at,
            received_at: sent_at + Duration::from_secs(4),
        };
        assert_eq!(s.seconds(), 0);
        assert!(s.check().is_ok());
    }
}
