//! The daily consent renewal job (EventBridge schedule, 09:00 UTC): every consent valid
//! until within the next `RENEWAL_WINDOW_DAYS` days gets exactly one renewal, and its user
//! a notification with the new SCA link. The work, and why overlapping or crashed runs
//! still renew once, is in `shared::services::renewal`.

use aws_lambda_events::eventbridge::EventBridgeEvent;
use chrono::{NaiveDate, Utc};
use shared::services::renewal::{RenewalReport, Renewals};

/// The day a run renews for: the day of the event's scheduled `time` (so a retried
/// invocation of one run covers the same days), else today (UTC).
pub fn run_day(event: &EventBridgeEvent) -> NaiveDate {
    event.time.unwrap_or_else(Utc::now).date_naive()
}

/// One scheduled run; the report is the function's answer (and is logged by the run).
pub async fn handle(service: &Renewals, event: &EventBridgeEvent) -> RenewalReport {
    let day = run_day(event);
    tracing::info!(event_id = event.id.as_deref().unwrap_or("-"), day = %day, "renewal run starting");
    service.run(day).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_run_day_is_the_scheduled_day() {
        let event: EventBridgeEvent = serde_json::from_value(json!({
            "version": "0",
            "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": "123456789012",
            "time": "2026-03-01T09:00:00Z",
            "region": "eu-central-1",
            "resources": ["arn:aws:events:eu-central-1:123456789012:rule/daily"],
            "detail": {}
        }))
        .unwrap();
        assert_eq!(
            run_day(&event),
            NaiveDate::from_ymd_opt(2026, 3, 1).unwrap()
        );

        let without_time: EventBridgeEvent = serde_json::from_value(json!({
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "detail": {}
        }))
        .unwrap();
        let before = Utc::now().date_naive();
        let day = run_day(&without_time);
        assert!(day >= before && day <= Utc::now().date_naive());
    }
}
