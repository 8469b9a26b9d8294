//! A one-line progress bar per epoch on a terminal (loss, Dice, slices/s, ETA); one log line
//! per epoch otherwise.

use std::io::{IsTerminal, Write};
use std::time::Instant;

pub struct Progress {
    enabled: bool,
    tty: bool,
    epoch: usize,
    epochs: usize,
    total: usize,
    started: Instant,
}

impl Progress {
    pub fn new(enabled: bool, epochs: usize) -> Self {
        Self {
            enabled,
            tty: std::io::stderr().is_terminal(),
            epoch: 0,
            epochs,
            total: 0,
            started: Instant::now(),
        }
    }

    pub fn start_epoch(&mut self, epoch: usize, total_slices: usize) {
        self.epoch = epoch;
        self.total = total_slices;
        self.started = Instant::now();
    }

    pub fn step(&self, done: usize, loss: f32) {
        if !(self.enabled && self.tty) {
            return;
        }
        let secs = self.started.elapsed().as_secs_f32().max(1e-3);
        let rate = done as f32 / secs;
        let eta = (self.total.saturating_sub(done)) as f32 / rate.max(1e-3);
        let width = 30;
        let filled = (width * done / self.total.max(1)).min(width);
        eprint!(
            "\repoch {}/{} [{}{}] {done}/{} loss {loss:.4} {rate:.1} slices/s ETA {eta:.0}s   ",
            self.epoch + 1,
            self.epochs,
            "#".repeat(filled),
            ".".repeat(width - filled),
            self.total
        );
        let _ = std::io::stderr().flush();
    }

    pub fn end_epoch(&self, loss: f32, val_dice: f64, best: bool, rate: f32) {
        if !self.enabled {
            return;
        }
        if self.tty {
            eprint!("\r");
        }
        eprintln!(
            "epoch {}/{} loss {loss:.4} val Dice {val_dice:.3}{} {rate:.1} slices/s {:.1}s          ",
            self.epoch + 1,
            self.epochs,
            if best { " (best)" } else { "" },
            self.started.elapsed().as_secs_f32()
        );
    }
}
