//! The hourly consent health job (EventBridge schedule, `rate(1 hour)`): valid consents
//! past their `validUntil` become expired (and get one renewal), and this hour's share of
//! the valid consents is checked at the bank, ends there being mirrored. The work is in
//! `shared::services::health`.
//!
//! **Operator switch:** an event whose `detail` is `{"allHours": true}` checks the shares
//! of all 24 hours at once (every valid consent's bank is asked once more that day), e.g.
//! after an outage: `aws lambda invoke` with such an event, or locally
//! `POST /__local/schedules/ConsentHealthFunction.Hourly/fire` with body
//! `{"allHours": true}`. The scheduled events carry an empty `detail`.

use aws_lambda_events::eventbridge::EventBridgeEvent;
use chrono::{DateTime, Timelike, Utc};
use shared::services::health::{Health, HealthReport};

/// The time a run works for: the event's scheduled `time` (so a retried invocation of one
/// run checks the same hour), else now.
pub fn run_time(event: &EventBridgeEvent) -> DateTime<Utc> {
    event.time.unwrap_or_else(Utc::now)
}

/// Whether the event asks for every hour's share (`detail.allHours == true`).
pub fn all_hours(event: &EventBridgeEvent) -> bool {
    event.detail.get("allHours").and_then(|v| v.as_bool()) == Some(true)
}

/// One run; the report is the function's answer (and is logged by the run).
pub async fn handle(service: &Health, event: &EventBridgeEvent) -> HealthReport {
    let now = run_time(event);
    let all = all_hours(event);
    tracing::info!(
        event_id = event.id.as_deref().unwrap_or("-"),
        now = %now,
        all_hours = all,
        "health run starting"
    );
    if all {
        service.run_hours(now, 0..24).await
    } else {
        service.run_hours(now, [now.hour()]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(time: Option<&str>, detail: serde_json::Value) -> EventBridgeEvent {
        let mut value = json!({
            "version": "0",
            "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "detail": detail,
        });
        if let Some(time) = time {
            value["time"] = json!(time);
        }
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn the_run_time_is_the_scheduled_time() {
        let scheduled = event(Some("2026-03-01T13:00:00Z"), json!({}));
        assert_eq!(run_time(&scheduled).hour(), 13);
        let before = Utc::now();
        let now = run_time(&event(None, json!({})));
        assert!(now >= before && now <= Utc::now());
    }

    #[test]
    fn all_hours_only_when_asked_for_exactly() {
        assert!(!all_hours(&event(None, json!({}))));
        assert!(!all_hours(&event(None, json!({"allHours": "true"}))));
        assert!(!all_hours(&event(None, json!({"allHours": false}))));
        assert!(!all_hours(&event(None, json!(null))));
        assert!(all_hours(&event(None, json!({"allHours": true}))));
    }
}
