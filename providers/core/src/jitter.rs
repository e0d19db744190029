//! Randomness for backoff jitter, injected so tests can pin it.

use std::sync::Mutex;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A source of fractions in `[0, 1)`.
pub trait Jitter: Send + Sync + 'static {
    fn fraction(&self) -> f64;
}

/// Random fractions from `rand`'s `StdRng`: reproducible from a seed, or seeded from the OS.
#[derive(Debug)]
pub struct SeededJitter {
    rng: Mutex<StdRng>,
}

impl SeededJitter {
    /// A reproducible sequence.
    pub fn new(seed: u64) -> Self {
        SeededJitter {
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
        }
    }

    /// A sequence seeded from the operating system's randomness.
    pub fn from_entropy() -> Self {
        SeededJitter {
            rng: Mutex::new(StdRng::from_entropy()),
        }
    }
}

impl Jitter for SeededJitter {
    fn fraction(&self) -> f64 {
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        rng.gen::<f64>()
    }
}

/// Always the same fraction (clamped into `[0, 1)`): for tests that assert exact delays.
#[derive(Debug, Clone, Copy)]
pub struct FixedJitter(pub f64);

impl Jitter for FixedJitter {
    fn fraction(&self) -> f64 {
        if self.0.is_nan() {
            return 0.0;
        }
        self.0.clamp(0.0, 1.0 - f64::EPSILON)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_fractions_are_reproducible_and_in_range() {
        let a = SeededJitter::new(42);
        let b = SeededJitter::new(42);
        let xs: Vec<f64> = (0..1000).map(|_| a.fraction()).collect();
        let ys: Vec<f64> = (0..1000).map(|_| b.fraction()).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((0.4..0.6).contains(&mean), "mean {mean} is not spread");
    }

    #[test]
    fn fixed_jitter_is_clamped() {
        assert_eq!(FixedJitter(0.25).fraction(), 0.25);
        assert!(FixedJitter(7.0).fraction() < 1.0);
        assert_eq!(FixedJitter(-1.0).fraction(), 0.0);
        assert_eq!(FixedJitter(f64::NAN).fraction(), 0.0);
    }
}
