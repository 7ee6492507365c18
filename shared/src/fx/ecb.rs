//! The ECB's daily euro foreign exchange reference rates.
//!
//! The ECB publishes one XML file per working day (around 16:00 CET):
//!
//! ```xml
//! <gesmes:Envelope …>
//!   <Cube>
//!     <Cube time='2025-03-14'>
//!       <Cube currency='USD' rate='1.0823'/>
//!       …
//! ```
//!
//! [`EcbFeed`] fetches and parses it (one HTTP request per call); [`EcbRateSource`] is
//! the feed behind a [`CachedRateSource`], which is what functions use.
//!
//! Parsing is strict: malformed or truncated XML, no or several `time` cubes, a missing
//! or unparseable date, a missing, unparseable or non-positive rate are all
//! [`FxError::Feed`] (better no rates than wrong ones). One exception: a currency code we
//! do not support (not ISO 4217 with 0 to 3 decimals) is skipped with a warning, so a
//! currency the ECB adds one day does not take down the conversion of all the others.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::NaiveDate;
use quick_xml::XmlVersion;
use quick_xml::events::{BytesStart, Event};
use rust_decimal::Decimal;
use url::Url;

use super::{CachePolicy, CachedRateSource, RateSource};
use crate::domain::error::echo;
use crate::domain::{Currency, FxError, RateTable};
use crate::services::Clock;

/// Where the daily XML is fetched from.
pub const ECB_RATES_URL_ENV: &str = "ECB_RATES_URL";
/// How long a fetched table is served from memory, in seconds.
pub const ECB_RATES_TTL_SECS_ENV: &str = "ECB_RATES_TTL_SECS";
/// Timeout of one fetch, in milliseconds.
pub const ECB_RATES_TIMEOUT_MS_ENV: &str = "ECB_RATES_TIMEOUT_MS";
/// The oldest rates ever served, in days (see [`CachePolicy::max_age_days`]).
pub const ECB_RATES_MAX_AGE_DAYS_ENV: &str = "ECB_RATES_MAX_AGE_DAYS";

/// The ECB's own file.
pub const DEFAULT_ECB_RATES_URL: &str =
    "https://www.ecb.europa.eu/stats/eurofxref/eurofxref-daily.xml";

/// Five seconds: the file is about 1.5 kB; an aggregation request should not wait longer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The file is about 1.5 kB; anything much larger is not the daily file.
const MAX_BODY_BYTES: usize = 256 * 1024;

/// Settings of the ECB adapter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EcbConfig {
    /// The daily XML (`ECB_RATES_URL`).
    pub url: Url,
    /// Timeout of one fetch, connection included (`ECB_RATES_TIMEOUT_MS`).
    pub timeout: Duration,
    /// Caching (`ECB_RATES_TTL_SECS`, `ECB_RATES_MAX_AGE_DAYS`).
    pub cache: CachePolicy,
}

impl Default for EcbConfig {
    fn default() -> Self {
        Self {
            url: Url::parse(DEFAULT_ECB_RATES_URL).expect("the default URL is valid"),
            timeout: DEFAULT_TIMEOUT,
            cache: CachePolicy::default(),
        }
    }
}

impl EcbConfig {
    /// The defaults with another feed URL (e.g. the sandbox's `/ecb/eurofxref-daily.xml`).
    #[must_use]
    pub fn with_url(url: Url) -> Self {
        Self {
            url,
            ..Self::default()
        }
    }

    /// From `ECB_RATES_URL`, `ECB_RATES_TTL_SECS`, `ECB_RATES_TIMEOUT_MS` and
    /// `ECB_RATES_MAX_AGE_DAYS`; unset variables keep their defaults.
    ///
    /// # Errors
    /// [`FxError::Config`] naming the variable that is not usable.
    pub fn from_env() -> Result<Self, FxError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// As [`Self::from_env`], with an explicit variable lookup (for tests).
    ///
    /// # Errors
    /// [`FxError::Config`] naming the variable that is not usable.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, FxError> {
        let mut config = Self::default();
        if let Some(text) = lookup(ECB_RATES_URL_ENV) {
            config.url = Url::parse(text.trim())
                .ok()
                .filter(|url| matches!(url.scheme(), "http" | "https"))
                .ok_or_else(|| {
                    FxError::Config(format!("{ECB_RATES_URL_ENV} must be an http(s) URL"))
                })?;
        }
        let number = |name: &str, min: u64, max: u64| -> Result<Option<u64>, FxError> {
            lookup(name)
                .map(|text| {
                    text.trim()
                        .parse::<u64>()
                        .ok()
                        .filter(|n| (min..=max).contains(n))
                        .ok_or_else(|| {
                            FxError::Config(format!(
                                "{name} must be a whole number from {min} to {max}"
                            ))
                        })
                })
                .transpose()
        };
        if let Some(secs) = number(ECB_RATES_TTL_SECS_ENV, 0, 86_400)? {
            config.cache.ttl = Duration::from_secs(secs);
        }
        if let Some(ms) = number(ECB_RATES_TIMEOUT_MS_ENV, 1, 60_000)? {
            config.timeout = Duration::from_millis(ms);
        }
        if let Some(days) = number(ECB_RATES_MAX_AGE_DAYS_ENV, 0, 30)? {
            config.cache.max_age_days = u32::try_from(days).unwrap_or(u32::MAX);
        }
        Ok(config)
    }
}

/// The ECB daily XML over HTTP, without caching: every [`RateSource::latest`] is a request.
pub struct EcbFeed {
    url: Url,
    client: reqwest::Client,
    timeout: Duration,
}

impl std::fmt::Debug for EcbFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcbFeed")
            .field("url", &self.url.as_str())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl EcbFeed {
    /// A feed client for `url`, with `timeout` for the whole request.
    ///
    /// # Errors
    /// [`FxError::Config`] if the HTTP client cannot be built.
    pub fn new(url: Url, timeout: Duration) -> Result<Self, FxError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("openbank-bundle/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FxError::Config(format!("HTTP client: {e}")))?;
        Ok(Self {
            url,
            client,
            timeout,
        })
    }

    fn transport_error(&self, e: &reqwest::Error) -> FxError {
        if e.is_timeout() {
            FxError::Unavailable(format!("no answer within {:?}", self.timeout))
        } else if e.is_connect() {
            FxError::Unavailable("cannot connect".into())
        } else {
            FxError::Unavailable(format!("request failed: {e}"))
        }
    }

    async fn fetch(&self) -> Result<Vec<u8>, FxError> {
        let mut response = self
            .client
            .get(self.url.clone())
            .header(reqwest::header::ACCEPT, "application/xml, text/xml")
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(FxError::Unavailable(format!("HTTP {}", status.as_u16())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport_error(&e))?
        {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(FxError::Feed(format!(
                    "answer larger than {MAX_BODY_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

#[async_trait]
impl RateSource for EcbFeed {
    async fn latest(&self) -> Result<RateTable, FxError> {
        let started = std::time::Instant::now();
        let result = match self.fetch().await {
            Ok(body) => parse_daily(&body),
            Err(error) => Err(error),
        };
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match &result {
            Ok(table) => {
                tracing::debug!(url = %self.url, elapsed_ms, as_of = %table.as_of(), "ECB rates fetched");
            }
            Err(error) => {
                tracing::warn!(url = %self.url, elapsed_ms, error = %error, "ECB rates fetch failed");
            }
        }
        result
    }
}

/// The ECB feed behind the in-process cache: the adapter functions use.
#[derive(Debug)]
pub struct EcbRateSource {
    inner: CachedRateSource<EcbFeed>,
}

impl EcbRateSource {
    /// From `config`, with the real clock.
    ///
    /// # Errors
    /// [`FxError::Config`] if the HTTP client cannot be built.
    pub fn new(config: EcbConfig) -> Result<Self, FxError> {
        Ok(Self {
            inner: CachedRateSource::new(EcbFeed::new(config.url, config.timeout)?, config.cache),
        })
    }

    /// From the environment (see [`EcbConfig::from_env`]).
    ///
    /// # Errors
    /// [`FxError::Config`] for an unusable variable.
    pub fn from_env() -> Result<Self, FxError> {
        Self::new(EcbConfig::from_env()?)
    }

    /// From `config`, with the given clock (tests).
    ///
    /// # Errors
    /// [`FxError::Config`] if the HTTP client cannot be built.
    pub fn with_clock(config: EcbConfig, clock: Arc<dyn Clock>) -> Result<Self, FxError> {
        Ok(Self {
            inner: CachedRateSource::with_clock(
                EcbFeed::new(config.url, config.timeout)?,
                config.cache,
                clock,
            ),
        })
    }
}

#[async_trait]
impl RateSource for EcbRateSource {
    async fn latest(&self) -> Result<RateTable, FxError> {
        self.inner.latest().await
    }
}

fn feed_error(message: impl std::fmt::Display) -> FxError {
    FxError::Feed(format!("ECB daily XML: {message}"))
}

/// Parses the ECB daily XML (see the module documentation for what is rejected).
///
/// # Errors
/// [`FxError::Feed`] saying what is wrong.
pub fn parse_daily(xml: &[u8]) -> Result<RateTable, FxError> {
    let text = std::str::from_utf8(xml).map_err(|_| feed_error("not UTF-8"))?;
    let mut reader = quick_xml::Reader::from_str(text);
    // Element depth overall, and how many enclosing elements are `Cube`s.
    let mut depth = 0_usize;
    let mut cube_depth = 0_usize;
    let mut root_seen = false;
    let mut as_of: Option<NaiveDate> = None;
    let mut rates: Vec<(Currency, Decimal)> = Vec::new();

    loop {
        let position = reader.buffer_position();
        let event = reader
            .read_event()
            .map_err(|e| feed_error(format!("malformed XML near byte {position}: {e}")))?;
        match event {
            Event::Start(ref element) | Event::Empty(ref element) => {
                let opens = matches!(event, Event::Start(_));
                let is_cube = element.local_name().as_ref() == "Cube";
                if depth == 0 {
                    if root_seen {
                        return Err(feed_error("more than one root element"));
                    }
                    root_seen = true;
                }
                if is_cube {
                    match cube_depth + 1 {
                        // <Cube>: the envelope of the days.
                        1 => {}
                        // <Cube time='2025-03-14'>
                        2 => {
                            let date = attribute(element, "time")?.ok_or_else(|| {
                                feed_error("the dated Cube has no time attribute")
                            })?;
                            let date =
                                NaiveDate::parse_from_str(&date, "%Y-%m-%d").map_err(|_| {
                                    feed_error(format!(
                                        "time '{}' is not a YYYY-MM-DD date",
                                        echo(&date).escape_debug()
                                    ))
                                })?;
                            if as_of.replace(date).is_some() {
                                return Err(feed_error("more than one day in the daily file"));
                            }
                        }
                        // <Cube currency='USD' rate='1.0823'/>
                        3 => rates.extend(rate_cube(element)?),
                        _ => return Err(feed_error("Cube elements nested too deep")),
                    }
                } else if cube_depth > 0 {
                    return Err(feed_error("unexpected element inside a Cube"));
                }
                if opens {
                    depth += 1;
                    cube_depth += usize::from(is_cube);
                }
            }
            Event::End(element) => {
                // quick-xml checks that end names match their start tags.
                depth = depth.saturating_sub(1);
                if element.local_name().as_ref() == "Cube" {
                    cube_depth = cube_depth.saturating_sub(1);
                }
            }
            Event::Text(content) => {
                let blank = content.xml10_content().trim().is_empty();
                if !blank && cube_depth > 0 {
                    return Err(feed_error("unexpected text inside a Cube"));
                }
                if !blank && depth == 0 {
                    return Err(feed_error("text outside the root element"));
                }
            }
            Event::CData(_) if cube_depth > 0 => {
                return Err(feed_error("unexpected text inside a Cube"));
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if depth != 0 {
        return Err(feed_error(
            "the document ends before its elements are closed",
        ));
    }
    let as_of = as_of.ok_or_else(|| feed_error("no Cube with a time attribute"))?;
    if rates.is_empty() {
        return Err(feed_error(format!("no rates for {as_of}")));
    }
    RateTable::new(as_of, rates).map_err(feed_error)
}

/// `(currency, rate)` of a `<Cube currency='USD' rate='1.0823'/>`, or `None` for a
/// currency we do not support (logged).
fn rate_cube(element: &BytesStart<'_>) -> Result<Option<(Currency, Decimal)>, FxError> {
    let code = attribute(element, "currency")?
        .ok_or_else(|| feed_error("a rate Cube has no currency attribute"))?;
    let rate_text = attribute(element, "rate")?
        .ok_or_else(|| feed_error(format!("no rate for {}", echo(&code).escape_debug())))?;
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(feed_error(format!(
            "'{}' is not a currency code",
            echo(&code).escape_debug()
        )));
    }
    let rate = parse_rate(&rate_text).ok_or_else(|| {
        feed_error(format!(
            "rate '{}' for {code} is not a positive decimal number",
            echo(&rate_text).escape_debug()
        ))
    })?;
    match Currency::parse(&code) {
        Ok(currency) => Ok(Some((currency, rate))),
        Err(_) => {
            tracing::warn!(currency = %code, "ECB rate for an unsupported currency skipped");
            Ok(None)
        }
    }
}

/// Digits with an optional fraction (`1.0823`, `161.23`, `25262`), greater than zero.
/// Signs, exponents, spaces and digit separators are not rate notation.
fn parse_rate(text: &str) -> Option<Decimal> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, "0"));
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !digits(fraction) {
        return None;
    }
    Decimal::from_str_exact(text)
        .ok()
        .filter(|rate| *rate > Decimal::ZERO)
}

/// The value of attribute `name` (no namespace prefix), unescaped. Duplicate attributes
/// and malformed attribute syntax are errors.
fn attribute(element: &BytesStart<'_>, name: &str) -> Result<Option<String>, FxError> {
    let mut found = None;
    for attribute in element.attributes() {
        let attribute = attribute.map_err(|e| feed_error(format!("malformed attribute: {e}")))?;
        if attribute.key.as_ref() == name {
            let value = attribute
                .normalized_value(XmlVersion::Implicit1_0)
                .map_err(|e| feed_error(format!("attribute {name}: {e}")))?;
            found = Some(value.into_owned());
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of the ECB's file (rates of some day, abridged).
    const DAILY: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<gesmes:Envelope xmlns:gesmes="http://www.gesmes.org/xml/2002-08-01" xmlns="http://www.ecb.int/vocabulary/2002-08-01/eurofxref">
	<gesmes:subject>Reference rates</gesmes:subject>
	<gesmes:Sender>
		<gesmes:name>European Central Bank</gesmes:name>
	</gesmes:Sender>
	<Cube>
		<Cube time='2025-03-14'>
			<Cube currency='USD' rate='1.0880'/>
			<Cube currency='JPY' rate='161.69'/>
			<Cube currency='CZK' rate='25.031'/>
			<Cube currency='GBP' rate='0.84020'/>
			<Cube currency='ISK' rate='149.30'/>
			<Cube currency='IDR' rate='17833.72'/>
		</Cube>
	</Cube>
</gesmes:Envelope>
"#;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str_exact(s).unwrap()
    }

    /// `DAILY` with one piece replaced.
    fn daily_with(from: &str, to: &str) -> String {
        assert!(DAILY.contains(from), "{from}");
        DAILY.replacen(from, to, 1)
    }

    fn feed_message(xml: &str) -> String {
        match parse_daily(xml.as_bytes()) {
            Err(FxError::Feed(message)) => message,
            other => panic!("expected a feed error, got {other:?}"),
        }
    }

    #[test]
    fn parses_the_daily_file() {
        let table = parse_daily(DAILY.as_bytes()).unwrap();
        assert_eq!(table.as_of(), NaiveDate::from_ymd_opt(2025, 3, 14).unwrap());
        assert_eq!(table.rate(Currency::USD), Some(dec("1.0880")));
        assert_eq!(table.rate(Currency::GBP), Some(dec("0.84020")));
        assert_eq!(table.rate(Currency::JPY), Some(dec("161.69")));
        assert_eq!(
            table.rate(Currency::parse("IDR").unwrap()),
            Some(dec("17833.72"))
        );
        assert_eq!(table.rate(Currency::EUR), Some(Decimal::ONE));
        assert_eq!(table.currencies().count(), 7);
    }

    #[test]
    fn accepts_double_quotes_and_non_empty_rate_cubes() {
        let xml = daily_with(
            "<Cube currency='USD' rate='1.0880'/>",
            r#"<Cube currency="USD" rate="1.0880"></Cube>"#,
        );
        let table = parse_daily(xml.as_bytes()).unwrap();
        assert_eq!(table.rate(Currency::USD), Some(dec("1.0880")));
    }

    #[test]
    fn skips_currencies_we_do_not_support() {
        let xml = daily_with(
            "<Cube currency='ISK' rate='149.30'/>",
            "<Cube currency='XDR' rate='0.8123'/>",
        );
        let table = parse_daily(xml.as_bytes()).unwrap();
        assert!(table.currencies().all(|c| c.code() != "XDR"));
        assert_eq!(table.currencies().count(), 6);
    }

    #[test]
    fn rejects_malformed_xml() {
        for (xml, needle) in [
            ("", "no Cube with a time attribute"),
            ("not xml at all", "text outside the root element"),
            // Cut inside a tag, and cut between elements.
            (&DAILY[..DAILY.len() / 2], "malformed XML"),
            (
                &DAILY[..DAILY.find("\t\t</Cube>").unwrap()],
                "ends before its elements are closed",
            ),
            (
                &daily_with("</Cube>\n\t</Cube>", "</Cube>\n\t</Cub>"),
                "malformed XML",
            ),
            (
                &daily_with("rate='1.0880'/>", "rate='1.0880'>"),
                "Cube elements nested too deep",
            ),
            (
                &daily_with("rate='1.0880'", "rate='1.0880' rate='1.1'"),
                "malformed attribute",
            ),
            (
                &daily_with("rate='1.0880'", "rate=1.0880"),
                "malformed attribute",
            ),
            (
                &daily_with("</gesmes:Envelope>", "</gesmes:Envelop>"),
                "malformed XML",
            ),
            (&format!("{DAILY}<more/>"), "more than one root element"),
            (
                &daily_with("<Cube currency='JPY'", "<Rate/><Cube currency='JPY'"),
                "unexpected element inside a Cube",
            ),
            (
                &daily_with("<Cube currency='JPY'", "1.2<Cube currency='JPY'"),
                "unexpected text inside a Cube",
            ),
        ] {
            let message = feed_message(xml);
            assert!(message.contains(needle), "{needle:?} not in {message:?}");
            assert!(message.starts_with("ECB daily XML: "), "{message}");
        }
        assert_eq!(
            parse_daily(&[0xff, 0xfe]),
            Err(FxError::Feed("ECB daily XML: not UTF-8".into()))
        );
    }

    #[test]
    fn rejects_a_missing_or_bad_date() {
        for (from, to, needle) in [
            (
                "<Cube time='2025-03-14'>",
                "<Cube>",
                "the dated Cube has no time attribute",
            ),
            (
                "time='2025-03-14'",
                "time='14.03.2025'",
                "time '14.03.2025' is not a YYYY-MM-DD date",
            ),
            (
                "time='2025-03-14'",
                "time='2025-02-30'",
                "is not a YYYY-MM-DD date",
            ),
            (
                "time='2025-03-14'",
                "date='2025-03-14'",
                "no time attribute",
            ),
        ] {
            let message = feed_message(&daily_with(from, to));
            assert!(message.contains(needle), "{needle:?} not in {message:?}");
        }
        let two_days = daily_with(
            "\t</Cube>\n</gesmes:Envelope>",
            "\t\t<Cube time='2025-03-13'><Cube currency='USD' rate='1.08'/></Cube>\n\t</Cube>\n</gesmes:Envelope>",
        );
        assert!(feed_message(&two_days).contains("more than one day"));
        let no_rates = "<Envelope><Cube><Cube time='2025-03-14'></Cube></Cube></Envelope>";
        assert!(feed_message(no_rates).contains("no rates for 2025-03-14"));
    }

    #[test]
    fn rejects_missing_unparseable_and_non_positive_rates() {
        for rate in [
            "0", "0.0000", "-1.0880", "+1.0880", "1,0880", "1.08.80", "1e3", " 1.0880", "", ".5",
            "1.", "NaN", "1_000", "１.0",
        ] {
            let xml = daily_with("rate='1.0880'", &format!("rate='{rate}'"));
            let message = feed_message(&xml);
            assert!(
                message.contains("is not a positive decimal number"),
                "{rate:?}: {message}"
            );
        }
        assert!(feed_message(&daily_with(" rate='1.0880'", "")).contains("no rate for USD"));
        assert!(feed_message(&daily_with("currency='USD' ", "")).contains("no currency attribute"));
        assert!(
            feed_message(&daily_with("currency='USD'", "currency='usd'"))
                .contains("'usd' is not a currency code")
        );
        assert!(
            feed_message(&daily_with("currency='JPY'", "currency='USD'"))
                .contains("USD given twice")
        );
    }

    #[test]
    fn long_values_are_cut_in_errors() {
        let long = "9".repeat(10_000);
        let message = feed_message(&daily_with("rate='1.0880'", &format!("rate='x{long}'")));
        assert!(message.len() < 200, "{} bytes", message.len());
    }

    #[test]
    fn config_defaults_and_environment() {
        let defaults = EcbConfig::from_lookup(|_| None).unwrap();
        assert_eq!(defaults, EcbConfig::default());
        assert_eq!(defaults.url.as_str(), DEFAULT_ECB_RATES_URL);
        assert_eq!(defaults.cache.ttl, Duration::from_secs(3600));
        assert_eq!(defaults.cache.max_age_days, 5);
        assert_eq!(defaults.timeout, DEFAULT_TIMEOUT);

        let set = EcbConfig::from_lookup(|name| {
            match name {
                ECB_RATES_URL_ENV => Some("http://127.0.0.1:9/ecb/eurofxref-daily.xml"),
                ECB_RATES_TTL_SECS_ENV => Some("60"),
                ECB_RATES_TIMEOUT_MS_ENV => Some(" 1500 "),
                ECB_RATES_MAX_AGE_DAYS_ENV => Some("3"),
                _ => None,
            }
            .map(str::to_owned)
        })
        .unwrap();
        assert_eq!(
            set.url.as_str(),
            "http://127.0.0.1:9/ecb/eurofxref-daily.xml"
        );
        assert_eq!(set.cache.ttl, Duration::from_secs(60));
        assert_eq!(set.timeout, Duration::from_millis(1500));
        assert_eq!(set.cache.max_age_days, 3);
    }

    #[test]
    fn config_rejects_unusable_values_naming_the_variable() {
        for (name, value) in [
            (ECB_RATES_URL_ENV, "ftp://example.com/rates.xml"),
            (ECB_RATES_URL_ENV, "not a url"),
            (ECB_RATES_TTL_SECS_ENV, "-1"),
            (ECB_RATES_TTL_SECS_ENV, "1h"),
            (ECB_RATES_TIMEOUT_MS_ENV, "0"),
            (ECB_RATES_MAX_AGE_DAYS_ENV, "31"),
        ] {
            let error =
                EcbConfig::from_lookup(|n| (n == name).then(|| value.to_owned())).unwrap_err();
            assert!(
                matches!(&error, FxError::Config(message) if message.starts_with(name)),
                "{name}={value}: {error}"
            );
        }
    }
}
