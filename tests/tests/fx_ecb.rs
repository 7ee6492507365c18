//! The ECB rate adapter against the sandbox bank's ECB feed (`/ecb/eurofxref-daily.xml`,
//! the real file's shape), served in this process: the table and a conversion match the
//! published numbers to the cent, concurrent callers on a cold cache cause one fetch, and
//! a feed that is down or malformed is an error (or the cached table, once there is one).
//!
//! The sandbox does not count ECB requests, so the sandbox router is served here behind a
//! small middleware that counts them, can delay them (so concurrent callers really
//! overlap) and can answer 503 instead (feed down).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{Datelike, Days, NaiveDate, Utc, Weekday};
use infra::sandbox::{SandboxConfig, SandboxState};
use shared::domain::{Currency, FxError, Money};
use shared::fx::RateSource;
use shared::fx::ecb::{ECB_RATES_URL_ENV, EcbConfig, EcbRateSource};
use url::Url;

const FEED_PATH: &str = "/ecb/eurofxref-daily.xml";

#[derive(Default)]
struct Feed {
    served: AtomicUsize,
    delay_ms: AtomicU64,
    down: AtomicBool,
}

async fn count_ecb(State(feed): State<Arc<Feed>>, request: Request, next: Next) -> Response {
    if request.uri().path() != FEED_PATH {
        return next.run(request).await;
    }
    let delay = feed.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if feed.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let response = next.run(request).await;
    if response.status().is_success() {
        feed.served.fetch_add(1, Ordering::SeqCst);
    }
    response
}

/// The sandbox bank on 127.0.0.1:PORT with the counting middleware; returns the feed URL.
async fn sandbox_feed() -> (Url, Arc<Feed>) {
    let feed = Arc::new(Feed::default());
    let state = SandboxState::new(SandboxConfig::default());
    let app = infra::sandbox::router(state).layer(axum::middleware::from_fn_with_state(
        feed.clone(),
        count_ecb,
    ));
    (serve(app).await.join(FEED_PATH).unwrap(), feed)
}

async fn serve(app: Router) -> Url {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Url::parse(&format!("http://{addr}/")).unwrap()
}

/// A server answering every request with `body` (for malformed feeds).
async fn serving(body: String) -> Url {
    let app = Router::new().fallback(move || {
        let body = body.clone();
        async move { ([("content-type", "text/xml")], Body::from(body)) }
    });
    serve(app).await.join(FEED_PATH).unwrap()
}

fn config(url: &Url) -> EcbConfig {
    EcbConfig::from_lookup(|name| (name == ECB_RATES_URL_ENV).then(|| url.to_string()))
        .expect("config")
}

/// The feed as published, read with plain string searches (not the adapter's parser).
struct Published {
    xml: String,
    date: NaiveDate,
}

impl Published {
    async fn fetch(url: &Url) -> Published {
        let xml = reqwest::get(url.clone())
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .text()
            .await
            .unwrap();
        let date = Self::attribute_after(&xml, "<Cube time='", "'");
        let date = NaiveDate::parse_from_str(&date, "%Y-%m-%d").unwrap();
        Published { xml, date }
    }

    fn attribute_after(xml: &str, start: &str, end: &str) -> String {
        let from = xml.find(start).unwrap_or_else(|| panic!("{start} in feed")) + start.len();
        let len = xml[from..].find(end).unwrap();
        xml[from..from + len].to_owned()
    }

    /// The rate of `currency` as an integer mantissa and its number of decimals:
    /// "1.0832" → (10832, 4).
    fn rate(&self, currency: &str) -> (i128, u32) {
        let text = Self::attribute_after(&self.xml, &format!("currency='{currency}' rate='"), "'");
        let (whole, fraction) = text.split_once('.').unwrap_or((&text, ""));
        let mantissa: i128 = format!("{whole}{fraction}").parse().unwrap();
        (mantissa, u32::try_from(fraction.len()).unwrap())
    }
}

/// `numerator / denominator` rounded half away from zero (both positive).
fn round_div(numerator: i128, denominator: i128) -> i128 {
    (2 * numerator + denominator) / (2 * denominator)
}

fn pow10(exponent: u32) -> i128 {
    10_i128.pow(exponent)
}

fn minor(amount: i128, decimals: u32) -> String {
    if decimals == 0 {
        return amount.to_string();
    }
    let scale = pow10(decimals);
    format!(
        "{}.{:0width$}",
        amount / scale,
        amount % scale,
        width = decimals as usize
    )
}

/// The sandbox dates its rates today, or the Friday before at weekends (UTC).
fn expected_date() -> NaiveDate {
    let today = Utc::now().date_naive();
    match today.weekday() {
        Weekday::Sat => today - Days::new(1),
        Weekday::Sun => today - Days::new(2),
        _ => today,
    }
}

#[tokio::test]
async fn the_table_and_conversions_match_the_published_rates_to_the_cent() {
    let (url, _) = sandbox_feed().await;
    let published = Published::fetch(&url).await;
    let source = EcbRateSource::new(config(&url)).unwrap();
    let table = source.latest().await.unwrap();

    // The date: the feed's, which is the sandbox's reference day. (Around midnight UTC
    // the day may turn between the two reads; accept the feed's own date then.)
    assert_eq!(table.as_of(), published.date);
    let expected = expected_date();
    assert!(
        published.date == expected || published.date + Days::new(1) == expected,
        "feed date {} vs expected {expected}",
        published.date
    );
    for code in [
        "USD", "JPY", "CZK", "DKK", "GBP", "PLN", "SEK", "CHF", "NOK",
    ] {
        let currency = Currency::parse(code).unwrap();
        let (mantissa, decimals) = published.rate(code);
        assert_eq!(
            table.rate(currency).map(|rate| rate.to_string()),
            Some(minor(mantissa, decimals)),
            "{code}"
        );
    }

    // 1234.56 EUR → USD: cents × rate, rounded half away from zero to cents.
    let (usd, usd_decimals) = published.rate("USD");
    let expected_cents = round_div(123_456 * usd, pow10(usd_decimals));
    let converted = table
        .convert(
            &Money::parse("1234.56", Currency::EUR).unwrap(),
            Currency::USD,
        )
        .unwrap();
    assert_eq!(converted.amount.to_minor_string(), minor(expected_cents, 2));
    assert_eq!(converted.as_of, published.date);

    // 1000.00 USD → GBP (a cross rate via EUR): cents × GBP / USD, rounded once.
    let (gbp, gbp_decimals) = published.rate("GBP");
    let expected_cents = round_div(
        100_000 * gbp * pow10(usd_decimals),
        usd * pow10(gbp_decimals),
    );
    let converted = table
        .convert(&Money::parse("1000", Currency::USD).unwrap(), Currency::GBP)
        .unwrap();
    assert_eq!(converted.amount.to_minor_string(), minor(expected_cents, 2));

    // 999.99 EUR → JPY: whole yen.
    let (jpy, jpy_decimals) = published.rate("JPY");
    let expected_yen = round_div(99_999 * jpy, 100 * pow10(jpy_decimals));
    let converted = table
        .convert(
            &Money::parse("999.99", Currency::EUR).unwrap(),
            Currency::JPY,
        )
        .unwrap();
    assert_eq!(converted.amount.to_minor_string(), minor(expected_yen, 0));

    // The feed has no BHD: an error, not a zero.
    assert_eq!(
        table.convert(&Money::parse("1", Currency::EUR).unwrap(), Currency::BHD),
        Err(FxError::MissingRate {
            currency: Currency::BHD
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_on_a_cold_cache_cause_one_fetch() {
    let (url, feed) = sandbox_feed().await;
    // Slow feed, so that all callers are waiting while the first fetch runs.
    feed.delay_ms.store(300, Ordering::SeqCst);
    let source = Arc::new(EcbRateSource::new(config(&url)).unwrap());
    let barrier = Arc::new(tokio::sync::Barrier::new(20));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (source, barrier) = (source.clone(), barrier.clone());
        tasks.spawn(async move {
            barrier.wait().await;
            source.latest().await
        });
    }
    let mut tables = Vec::new();
    while let Some(result) = tasks.join_next().await {
        tables.push(result.unwrap().unwrap());
    }
    assert_eq!(tables.len(), 20);
    assert!(tables.iter().all(|table| *table == tables[0]));
    assert_eq!(feed.served.load(Ordering::SeqCst), 1);

    // Within the TTL, later calls are answered from memory too.
    source.latest().await.unwrap();
    assert_eq!(feed.served.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn without_a_ttl_every_call_fetches() {
    // The counter the test above relies on does count every fetch.
    let (url, feed) = sandbox_feed().await;
    let mut config = config(&url);
    config.cache.ttl = Duration::ZERO;
    let source = EcbRateSource::new(config).unwrap();
    source.latest().await.unwrap();
    source.latest().await.unwrap();
    assert_eq!(feed.served.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_feed_that_is_down_is_an_error_when_nothing_is_cached() {
    let closed = {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        listener.local_addr().unwrap()
    };
    let url = Url::parse(&format!("http://{closed}{FEED_PATH}")).unwrap();
    let source = EcbRateSource::new(config(&url)).unwrap();
    let error = source.latest().await.unwrap_err();
    assert!(matches!(error, FxError::Unavailable(_)), "{error}");

    // A 503 from the feed, too.
    let (url, feed) = sandbox_feed().await;
    feed.down.store(true, Ordering::SeqCst);
    let source = EcbRateSource::new(config(&url)).unwrap();
    assert_eq!(
        source.latest().await,
        Err(FxError::Unavailable("HTTP 503".into()))
    );
}

#[tokio::test]
async fn a_feed_that_goes_down_serves_the_cached_table() {
    let (url, feed) = sandbox_feed().await;
    let mut config = config(&url);
    config.cache.ttl = Duration::ZERO;
    config.cache.retry_after = Duration::ZERO;
    let source = EcbRateSource::new(config).unwrap();
    let fetched = source.latest().await.unwrap();

    feed.down.store(true, Ordering::SeqCst);
    assert_eq!(source.latest().await.unwrap(), fetched);
    assert_eq!(feed.served.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_malformed_feed_is_an_error() {
    let (url, _) = sandbox_feed().await;
    let published = Published::fetch(&url).await;
    let usd_rate = format!(
        "rate='{}'",
        minor(published.rate("USD").0, published.rate("USD").1)
    );
    let cases = [
        // Cut off in the middle.
        published.xml[..published.xml.len() / 2].to_owned(),
        // Cut off between elements.
        published.xml[..published.xml.rfind("</Cube>").unwrap()].to_owned(),
        // No date.
        published.xml.replacen("time='", "day='", 1),
        // Unparseable and non-positive rates.
        published.xml.replacen(&usd_rate, "rate='1,08'", 1),
        published.xml.replacen(&usd_rate, "rate='0'", 1),
        published.xml.replacen(&usd_rate, "rate='-1.08'", 1),
        // Not the feed at all.
        "<html><body>Maintenance</body></html>".to_owned(),
    ];
    for body in cases {
        let url = serving(body.clone()).await;
        let source = EcbRateSource::new(config(&url)).unwrap();
        let error = source.latest().await.unwrap_err();
        assert!(
            matches!(&error, FxError::Feed(message) if message.starts_with("ECB daily XML: ")),
            "{error} for {body}"
        );
    }
    // The unmodified feed, served the same way, parses: the cases fail for their defect.
    let url = serving(published.xml.clone()).await;
    let table = EcbRateSource::new(config(&url))
        .unwrap()
        .latest()
        .await
        .unwrap();
    assert_eq!(table.as_of(), published.date);
}
