//! `GET /v1/notifications`: the caller's in-app inbox, newest first.

use serde::Serialize;
use shared::http::{self, FieldError, Problem, Request, Response};
use shared::store::{Notification, NotificationStore};

/// Largest page the inbox returns.
pub const MAX_LIMIT: usize = 100;
const DEFAULT_LIMIT: usize = 50;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NotificationView<'a> {
    id: &'a str,
    kind: &'a str,
    title: &'a str,
    message: &'a str,
    data: &'a serde_json::Value,
    created_at: String,
}

impl<'a> From<&'a Notification> for NotificationView<'a> {
    fn from(n: &'a Notification) -> Self {
        Self {
            id: n.notification_id.as_str(),
            kind: &n.kind,
            title: &n.title,
            message: &n.message,
            data: &n.data,
            created_at: n
                .created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }
}

pub async fn handle(store: &dyn NotificationStore, request: &Request) -> Response {
    let user = match http::caller(request) {
        Ok(user) => user,
        Err(problem) => return problem.into_response(),
    };
    let limit = match request.query_string_parameters.first("limit") {
        None => DEFAULT_LIMIT,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                let mut problem = Problem::new(
                    400,
                    "validation",
                    "Invalid request",
                    "limit is out of range.",
                );
                problem.errors.push(FieldError {
                    field: "limit".into(),
                    message: format!("must be a whole number from 1 to {MAX_LIMIT}"),
                });
                return problem.into_response();
            }
        },
    };
    match store.list(&user, limit).await {
        Ok(items) => {
            let views: Vec<NotificationView<'_>> =
                items.iter().map(NotificationView::from).collect();
            http::json(200, &serde_json::json!({ "notifications": views }))
        }
        Err(e) => {
            tracing::error!(error = %e, "reading the inbox failed");
            Problem::new(
                500,
                "internal",
                "Internal Server Error",
                "The inbox could not be read; try again.",
            )
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::domain::{NotificationId, UserId};
    use shared::store::StoreError;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Memory(Mutex<Vec<Notification>>);

    #[async_trait::async_trait]
    impl NotificationStore for Memory {
        async fn put(&self, n: &Notification) -> Result<bool, StoreError> {
            self.0.lock().unwrap().push(n.clone());
            Ok(true)
        }
        async fn list(&self, user: &UserId, limit: usize) -> Result<Vec<Notification>, StoreError> {
            let mut items: Vec<_> = self
                .0
                .lock()
                .unwrap()
                .iter()
                .filter(|n| &n.user_id == user)
                .cloned()
                .collect();
            items.sort_by_key(|n| std::cmp::Reverse(n.created_at));
            items.truncate(limit);
            Ok(items)
        }
        async fn get_event(
            &self,
            _: &UserId,
            _: &str,
        ) -> Result<Option<shared::store::StoredEvent>, StoreError> {
            Err(StoreError::Backend(
                "the inbox never reads single events".into(),
            ))
        }
        async fn mark_webhook(
            &self,
            _: &UserId,
            _: &str,
            _: shared::store::WebhookMark,
            _: chrono::DateTime<chrono::Utc>,
        ) -> Result<bool, StoreError> {
            Err(StoreError::Backend("the inbox never marks webhooks".into()))
        }
    }

    fn request(sub: Option<&str>, query: &str) -> Request {
        let mut v = serde_json::json!({
            "version": "2.0", "routeKey": "GET /v1/notifications", "rawPath": "/v1/notifications",
            "rawQueryString": query, "headers": {}, "isBase64Encoded": false,
            "requestContext": {"accountId": "1", "apiId": "local", "domainName": "l", "domainPrefix": "l",
                "requestId": "r", "routeKey": "GET /v1/notifications", "stage": "$default",
                "time": "21/Nov/2026:13:00:00 +0000", "timeEpoch": 0,
                "http": {"method": "GET", "path": "/v1/notifications", "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "t"}}
        });
        if let Some((k, val)) = query.split_once('=') {
            v["queryStringParameters"] = serde_json::json!({ k: val });
        }
        if let Some(sub) = sub {
            v["requestContext"]["authorizer"] =
                serde_json::json!({"jwt": {"claims": {"sub": sub}, "scopes": null}});
        }
        serde_json::from_value(v).unwrap()
    }

    fn body(r: &Response) -> serde_json::Value {
        match &r.body {
            Some(aws_lambda_events::encodings::Body::Text(t)) => serde_json::from_str(t).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    async fn store() -> Memory {
        let store = Memory::default();
        for (user, event, minutes) in [("alice", "a1", 3), ("alice", "a2", 1), ("bob", "b1", 2)] {
            store
                .put(&Notification {
                    user_id: UserId::parse(user).unwrap(),
                    notification_id: NotificationId::new(),
                    event_id: event.into(),
                    kind: "consent.valid".into(),
                    title: "t".into(),
                    message: "m".into(),
                    data: serde_json::json!({}),
                    created_at: chrono::Utc::now() - chrono::Duration::minutes(minutes),
                })
                .await
                .unwrap();
        }
        store
    }

    #[tokio::test]
    async fn only_the_callers_notifications_newest_first() {
        let store = store().await;
        let r = handle(&store, &request(Some("alice"), "")).await;
        assert_eq!(r.status_code, 200);
        let b = body(&r);
        let items = b["notifications"].as_array().unwrap();
        assert_eq!(items.len(), 2);
        assert!(items[0]["createdAt"].as_str().unwrap() > items[1]["createdAt"].as_str().unwrap());
        let r = handle(&store, &request(Some("alice"), "limit=1")).await;
        assert_eq!(body(&r)["notifications"].as_array().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn no_caller_or_bad_limit() {
        let store = store().await;
        assert_eq!(handle(&store, &request(None, "")).await.status_code, 401);
        for bad in ["limit=0", "limit=101", "limit=abc"] {
            let r = handle(&store, &request(Some("alice"), bad)).await;
            assert_eq!(r.status_code, 400, "{bad}");
            assert_eq!(body(&r)["errors"][0]["field"], "limit");
        }
    }
}
