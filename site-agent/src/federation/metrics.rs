//! The agent's Prometheus metrics and health check (`http_listen` in `[federation]`): what it
//! is doing now (task state, epoch, training throughput, loss, validation Dice), whether it
//! holds a session with the coordinator, and how its tasks ended.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fedseg_proto::http::{Reply, metric};
use fedseg_proto::pb;

/// The states `set_state` moves through; each gets a 0/1 sample so dashboards can stack them.
const STATES: [&str; 5] = ["idle", "downloading", "training", "evaluating", "uploading"];

#[derive(Default)]
pub struct AgentMetrics {
    /// The heartbeat the agent sends: the one source of its current state.
    pub status: Arc<Mutex<pb::HeartbeatRequest>>,
    pub connected: AtomicBool,
    pub sessions: AtomicU64,
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub refused: AtomicU64,
    /// Kept past the end of its task, unlike `status`, which goes back to idle: a scrape
    /// between two tasks still sees how fast the last epoch trained.
    pub last_epoch: Mutex<LastEpoch>,
}

#[derive(Default, Clone, Copy)]
pub struct LastEpoch {
    pub slices_per_s: f32,
    pub loss: f32,
    pub val_dice: f32,
}

impl AgentMetrics {
    /// A finished epoch: into the heartbeat (the coordinator's live view) and into the gauges.
    pub fn record_epoch(&self, e: &crate::train::EpochStats, epochs: u32) {
        {
            let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
            s.epoch = e.epoch as u32 + 1;
            s.epochs = epochs;
            s.loss = e.loss;
            s.val_dice = e.val_dice as f32;
            s.slices_per_s = e.slices_per_s;
        }
        *self.last_epoch.lock().unwrap_or_else(|p| p.into_inner()) = LastEpoch {
            slices_per_s: e.slices_per_s,
            loss: e.loss,
            val_dice: e.val_dice as f32,
        };
    }

    pub fn render(&self) -> String {
        let s = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let last = *self.last_epoch.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        let one = |v: f64| vec![(String::new(), v)];
        let count = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        metric(
            &mut out,
            "fedseg_agent_connected",
            "gauge",
            "1 while the agent holds a session with the coordinator.",
            &one(f64::from(u8::from(self.connected.load(Ordering::Relaxed)))),
        );
        metric(
            &mut out,
            "fedseg_agent_sessions_total",
            "counter",
            "Sessions opened with the coordinator (reconnects included).",
            &one(count(&self.sessions)),
        );
        let states: Vec<(String, f64)> = STATES
            .iter()
            .map(|st| {
                (
                    format!("{{state=\"{st}\"}}"),
                    f64::from(u8::from(s.state == *st)),
                )
            })
            .collect();
        metric(
            &mut out,
            "fedseg_agent_task_state",
            "gauge",
            "1 for what the agent is doing now.",
            &states,
        );
        metric(
            &mut out,
            "fedseg_agent_epoch",
            "gauge",
            "Epochs finished in the current training task.",
            &one(f64::from(s.epoch)),
        );
        metric(
            &mut out,
            "fedseg_agent_epochs",
            "gauge",
            "Epochs the current training task asks for.",
            &one(f64::from(s.epochs)),
        );
        metric(
            &mut out,
            "fedseg_agent_train_slices_per_second",
            "gauge",
            "Training throughput of the last finished epoch.",
            &one(f64::from(last.slices_per_s)),
        );
        metric(
            &mut out,
            "fedseg_agent_train_loss",
            "gauge",
            "Training loss of the last finished epoch.",
            &one(f64::from(last.loss)),
        );
        metric(
            &mut out,
            "fedseg_agent_val_dice",
            "gauge",
            "Validation Dice after the last finished epoch.",
            &one(f64::from(last.val_dice)),
        );
        metric(
            &mut out,
            "fedseg_agent_tasks_total",
            "counter",
            "Tasks by how they ended: result delivered, failed here, refused by the coordinator.",
            &[
                ("{result=\"delivered\"}".into(), count(&self.delivered)),
                ("{result=\"failed\"}".into(), count(&self.failed)),
                ("{result=\"refused\"}".into(), count(&self.refused)),
            ],
        );
        out
    }

    fn route(&self, path: &str) -> Reply {
        match path {
            "/metrics" => Reply::ok("text/plain; version=0.0.4", self.render()),
            // Alive is healthy: a disconnected agent is retrying, which a restart would not fix.
            "/healthz" => Reply::text(
                "200 OK",
                if self.connected.load(Ordering::Relaxed) {
                    "ok: connected\n".into()
                } else {
                    "ok: connecting\n".into()
                },
            ),
            _ => Reply::not_found(),
        }
    }

    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) {
        fedseg_proto::http::serve(listener, move |path| self.route(path)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_state_is_the_one_set() {
        let m = AgentMetrics::default();
        m.status
            .lock()
            .map(|mut s| s.state = "training".into())
            .ok();
        m.delivered.fetch_add(2, Ordering::Relaxed);
        let text = m.render();
        assert!(text.contains("fedseg_agent_task_state{state=\"training\"} 1\n"));
        assert!(text.contains("fedseg_agent_task_state{state=\"idle\"} 0\n"));
        assert!(text.contains("fedseg_agent_tasks_total{result=\"delivered\"} 2\n"));
        assert!(text.contains("fedseg_agent_connected 0\n"));
    }

    #[test]
    fn the_last_epoch_outlives_its_task() {
        let m = AgentMetrics::default();
        let e = crate::train::EpochStats {
            epoch: 0,
            loss: 0.5,
            val_dice: 0.75,
            slices_per_s: 12.5,
            seconds: 1.0,
        };
        m.record_epoch(&e, 3);
        assert!(m.render().contains("fedseg_agent_epoch 1\n"));
        // The task ends: the heartbeat goes back to idle, the last epoch's numbers stay.
        m.status.lock().map(|mut s| *s = Default::default()).ok();
        let text = m.render();
        assert!(text.contains("fedseg_agent_epoch 0\n"), "{text}");
        assert!(
            text.contains("fedseg_agent_train_slices_per_second 12.5\n"),
            "{text}"
        );
        assert!(text.contains("fedseg_agent_val_dice 0.75\n"), "{text}");
    }
}
