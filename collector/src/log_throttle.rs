//! A warning that is logged at most once per interval, with the number of times it
//! was held back: refusals of sensor input are counted in metrics, and the log
//! says that they happen without letting one host's flood of bad input become a
//! flood of log lines (or fill the disk).

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct LogThrottle {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Default for LogThrottle {
    fn default() -> Self {
        LogThrottle::new(Duration::from_secs(10))
    }
}

impl LogThrottle {
    pub fn new(every: Duration) -> LogThrottle {
        LogThrottle {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(n)` when this occurrence should be logged (`n` were held back since the
    /// last one logged), `None` when it is held back.
    pub fn allow(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.0.is_some_and(|t| t.elapsed() < self.every) {
            s.1 += 1;
            return None;
        }
        s.0 = Some(Instant::now());
        Some(std::mem::take(&mut s.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_once_per_interval_and_counts_the_rest() {
        let t = LogThrottle::new(Duration::from_millis(50));
        assert_eq!(t.allow(), Some(0));
        assert_eq!(t.allow(), None);
        assert_eq!(t.allow(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(t.allow(), Some(2));
    }
}
