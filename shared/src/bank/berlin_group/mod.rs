//! The Berlin Group NextGenPSD2 1.3 connector on reqwest. Stateless apart from its HTTP
//! client; one instance per bank, configured by that bank's registry entry.

mod transformers;

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, RequestBuilder};
use serde::de::DeserializeOwned;
use url::Url;

use self::transformers as wire;
use super::registry::BankConfig;
use super::{
    Account, Balance, BankApi, BankError, ConsentCreated, ConsentDetails, ConsentRequest,
    PaymentInitiated, PaymentInitiation, PaymentProduct, PsuContext, RedirectUris, Transaction,
    TransactionQuery,
};
use crate::domain::{
    AccountId, BankConsentId, BankId, BankPaymentId, ConsentStatus, RequestId, TransactionStatus,
};

/// Upper bound on `_links.next` pages followed for one transaction listing.
const MAX_TRANSACTION_PAGES: usize = 500;
/// Pages of one listing in flight at once with the `parallelPages` quirk.
const PARALLEL_PAGES: usize = 8;

pub struct BerlinGroupConnector {
    config: BankConfig,
    client: reqwest::Client,
    timeout: Duration,
}

impl std::fmt::Debug for BerlinGroupConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BerlinGroupConnector")
            .field("bank", &self.config.id)
            .field("base_url", &self.config.base_url.as_str())
            .finish_non_exhaustive()
    }
}

/// Headers a call carries besides the ones every call has.
#[derive(Default)]
struct CallHeaders<'a> {
    request_id: Option<&'a RequestId>,
    consent: Option<&'a BankConsentId>,
    psu: Option<&'a PsuContext>,
    psu_id: Option<&'a str>,
    redirect: Option<&'a RedirectUris>,
}

impl BerlinGroupConnector {
    pub fn new(config: BankConfig) -> Result<Self, BankError> {
        let timeout = Duration::from_millis(config.timeout_ms);
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("openbank-bundle/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(credentials) = &config.credentials {
            let pem = credentials.load_pem()?;
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                BankError::Config(format!("bank {}: client identity: {e}", config.id))
            })?;
            builder = builder.identity(identity);
        }
        let client = builder
            .build()
            .map_err(|e| BankError::Config(format!("bank {}: HTTP client: {e}", config.id)))?;
        Ok(Self {
            config,
            client,
            timeout,
        })
    }

    pub fn config(&self) -> &BankConfig {
        &self.config
    }

    /// `{base}/v1/{segments...}` with each segment percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.config.base_url.clone();
        {
            let mut path = url
                .path_segments_mut()
                .expect("registry validated base URLs as http(s)");
            path.pop_if_empty().push("v1");
            for segment in segments {
                path.push(segment);
            }
        }
        url
    }

    /// Resolves a `_links` href: absolute URLs stay; a path is taken relative to the
    /// bank's origin, and gets the base URL's path prefix when it starts at `/v1/`.
    fn resolve_href(&self, href: &str) -> Result<Url, BankError> {
        if let Ok(url) = Url::parse(href) {
            return Ok(url);
        }
        let base = &self.config.base_url;
        let prefix = base.path().trim_end_matches('/');
        let path = if href.starts_with("/v1/") && !prefix.is_empty() {
            format!("{prefix}{href}")
        } else if href.starts_with('/') {
            href.to_owned()
        } else {
            format!("{prefix}/{href}")
        };
        base.join(&path)
            .map_err(|e| BankError::Protocol(format!("bad link {href:?}: {e}")))
    }

    fn header_name(&self, standard: &'static str) -> HeaderName {
        match self.config.quirks.header_names.get(standard) {
            Some(renamed) => HeaderName::try_from(renamed.as_str())
                .unwrap_or_else(|_| HeaderName::from_static(lowercase_static(standard))),
            None => HeaderName::from_static(lowercase_static(standard)),
        }
    }

    fn request(&self, method: Method, url: Url, headers: CallHeaders<'_>) -> RequestBuilder {
        let mut map = HeaderMap::new();
        let request_id = headers.request_id.copied().unwrap_or_else(RequestId::new);
        map.insert(
            self.header_name("X-Request-ID"),
            value(&request_id.to_string()),
        );
        if let Some(consent) = headers.consent {
            map.insert(self.header_name("Consent-ID"), value(consent.as_str()));
        }
        if let Some(psu) = headers.psu {
            if let Some(ip) = psu.ip_address {
                map.insert(self.header_name("PSU-IP-Address"), value(&ip.to_string()));
            }
            if let Some(Ok(v)) = psu.user_agent.as_deref().map(HeaderValue::from_str) {
                map.insert(self.header_name("PSU-User-Agent"), v);
            }
        }
        if let Some(Ok(v)) = headers.psu_id.map(HeaderValue::from_str) {
            map.insert(self.header_name("PSU-ID"), v);
        }
        if let Some(redirect) = headers.redirect {
            map.insert(
                self.header_name("TPP-Redirect-Preferred"),
                HeaderValue::from_static("true"),
            );
            map.insert(
                self.header_name("TPP-Redirect-URI"),
                value(redirect.ok.as_str()),
            );
            if let Some(nok) = &redirect.nok {
                map.insert(
                    self.header_name("TPP-Nok-Redirect-URI"),
                    value(nok.as_str()),
                );
            }
        }
        for (name, v) in &self.config.quirks.extra_headers {
            if let (Ok(name), Ok(v)) = (
                HeaderName::try_from(name.as_str()),
                HeaderValue::from_str(v),
            ) {
                map.insert(name, v);
            }
        }
        map.insert(
            reqwest::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        );
        let mut builder = self.client.request(method, url).headers(map);
        if !self.config.quirks.extra_query.is_empty() {
            builder = builder.query(&self.config.quirks.extra_query);
        }
        builder
    }

    async fn send(&self, builder: RequestBuilder) -> Result<Vec<u8>, BankError> {
        let response = builder.send().await.map_err(|e| self.transport_error(e))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| wire::parse_retry_after(v, chrono::Utc::now()));
        let body = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(e))?;
        if status.is_success() {
            Ok(body.to_vec())
        } else {
            let err = wire::error_from_response(status.as_u16(), &body, retry_after);
            tracing::warn!(bank = %self.config.id, status = status.as_u16(), code = err.code(), "bank call failed");
            Err(err)
        }
    }

    async fn call<T: DeserializeOwned>(&self, builder: RequestBuilder) -> Result<T, BankError> {
        let body = self.send(builder).await?;
        serde_json::from_slice(&body)
            .map_err(|e| BankError::Protocol(format!("unexpected response body: {e}")))
    }

    /// One page of a transaction listing, after the loop and page-count guards.
    async fn transaction_page(
        &self,
        url: Url,
        consent: &BankConsentId,
        psu: &PsuContext,
        seen: &mut HashSet<String>,
    ) -> Result<wire::TransactionPage, BankError> {
        if seen.len() >= MAX_TRANSACTION_PAGES {
            return Err(BankError::Protocol(format!(
                "more than {MAX_TRANSACTION_PAGES} transaction pages"
            )));
        }
        if !seen.insert(url.to_string()) {
            return Err(BankError::Protocol(
                "transaction pages link in a loop".into(),
            ));
        }
        self.fetch_transaction_page(url, consent, psu).await
    }

    /// A GET of account information under `consent`, with the PSU's headers.
    fn ais_get(&self, url: Url, consent: &BankConsentId, psu: &PsuContext) -> RequestBuilder {
        self.request(
            Method::GET,
            url,
            CallHeaders {
                consent: Some(consent),
                psu: Some(psu),
                ..Default::default()
            },
        )
    }

    /// `GET /v1/accounts`, with `withBalance=true` when asked (balances come only then).
    async fn account_list(
        &self,
        consent: &BankConsentId,
        psu: &PsuContext,
        with_balance: bool,
    ) -> Result<Vec<super::ListedAccount>, BankError> {
        let mut url = self.url(&["accounts"]);
        if with_balance {
            url.query_pairs_mut().append_pair("withBalance", "true");
        }
        let builder = self.ais_get(url, consent, psu);
        let response: wire::AccountListResponse = self.call(builder).await?;
        response.into_domain()
    }

    async fn fetch_transaction_page(
        &self,
        url: Url,
        consent: &BankConsentId,
        psu: &PsuContext,
    ) -> Result<wire::TransactionPage, BankError> {
        let builder = self.ais_get(url, consent, psu);
        let response: wire::TransactionsResponse = self.call(builder).await?;
        response.transactions.unwrap_or_default().into_domain()
    }

    fn transport_error(&self, e: reqwest::Error) -> BankError {
        if e.is_timeout() {
            BankError::Timeout(self.timeout)
        } else if e.is_connect() || e.is_request() || e.is_body() {
            BankError::Unavailable {
                status: None,
                retry_after: None,
            }
        } else if e.is_decode() {
            BankError::Protocol(e.to_string())
        } else {
            BankError::Unavailable {
                status: e.status().map(|s| s.as_u16()),
                retry_after: None,
            }
        }
    }
}

/// The URLs of pages 1..=N of a transaction listing, when the first page's links allow
/// fetching them all at once (the `parallelPages` quirk): `next` has `pageIndex=1`,
/// `last` has `pageIndex=N`, and `last` is `next` with only `pageIndex` changed. `None`
/// otherwise (the caller then follows `next` one page at a time).
fn parallel_page_urls(next: &Url, last: &Url) -> Option<Vec<Url>> {
    let page_index = |url: &Url| -> Option<usize> {
        let mut found = url
            .query_pairs()
            .filter(|(k, _)| k == "pageIndex")
            .map(|(_, v)| v.parse::<usize>().ok());
        let index = found.next()??;
        // A second pageIndex is ambiguous.
        found.next().is_none().then_some(index)
    };
    if page_index(next)? != 1 {
        return None;
    }
    let last_index = page_index(last)?;
    if !(1..MAX_TRANSACTION_PAGES).contains(&last_index) {
        return None;
    }
    let with_index = |index: usize| {
        let pairs: Vec<(String, String)> = next
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "pageIndex" {
                    index.to_string()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        let mut url = next.clone();
        url.query_pairs_mut().clear().extend_pairs(pairs);
        url
    };
    let same_listing = |a: &Url, b: &Url| {
        a.origin() == b.origin()
            && a.path() == b.path()
            && a.query_pairs().collect::<Vec<_>>() == b.query_pairs().collect::<Vec<_>>()
    };
    if !same_listing(&with_index(last_index), last) {
        return None;
    }
    Some((1..=last_index).map(with_index).collect())
}

/// Header names we use, as the lowercase static strings `HeaderName` wants.
fn lowercase_static(standard: &'static str) -> &'static str {
    match standard {
        "X-Request-ID" => "x-request-id",
        "Consent-ID" => "consent-id",
        "PSU-IP-Address" => "psu-ip-address",
        "PSU-User-Agent" => "psu-user-agent",
        "PSU-ID" => "psu-id",
        "TPP-Redirect-Preferred" => "tpp-redirect-preferred",
        "TPP-Redirect-URI" => "tpp-redirect-uri",
        "TPP-Nok-Redirect-URI" => "tpp-nok-redirect-uri",
        other => unreachable!("header {other} is not one the connector sends"),
    }
}

fn value(s: &str) -> HeaderValue {
    // Our own ids, IPs and URLs are ASCII; a failure here is a bug, not bank input.
    HeaderValue::from_str(s).expect("header value is visible ASCII")
}

#[async_trait]
impl BankApi for BerlinGroupConnector {
    fn bank_id(&self) -> &BankId {
        &self.config.id
    }

    async fn create_consent(&self, request: &ConsentRequest) -> Result<ConsentCreated, BankError> {
        let psu = PsuContext::present(request.psu_ip);
        let builder = self
            .request(
                Method::POST,
                self.url(&["consents"]),
                CallHeaders {
                    psu: Some(&psu),
                    psu_id: request.psu_id.as_deref(),
                    redirect: Some(&request.redirect),
                    ..Default::default()
                },
            )
            .json(&wire::ConsentsBody::from_request(request));
        let response: wire::ConsentsResponse = self.call(builder).await?;
        response.into_domain(&|href| self.resolve_href(href))
    }

    async fn get_consent(&self, consent: &BankConsentId) -> Result<ConsentDetails, BankError> {
        let builder = self.request(
            Method::GET,
            self.url(&["consents", consent.as_str()]),
            CallHeaders::default(),
        );
        let response: wire::ConsentInformationResponse = self.call(builder).await?;
        response.into_domain()
    }

    async fn consent_status(&self, consent: &BankConsentId) -> Result<ConsentStatus, BankError> {
        let builder = self.request(
            Method::GET,
            self.url(&["consents", consent.as_str(), "status"]),
            CallHeaders::default(),
        );
        let response: wire::ConsentStatusResponse = self.call(builder).await?;
        Ok(wire::consent_status(&response.consent_status))
    }

    async fn delete_consent(&self, consent: &BankConsentId) -> Result<(), BankError> {
        let builder = self.request(
            Method::DELETE,
            self.url(&["consents", consent.as_str()]),
            CallHeaders::default(),
        );
        self.send(builder).await.map(|_| ())
    }

    async fn accounts(
        &self,
        consent: &BankConsentId,
        psu: &PsuContext,
    ) -> Result<Vec<Account>, BankError> {
        Ok(self
            .account_list(consent, psu, false)
            .await?
            .into_iter()
            .map(|(account, _)| account)
            .collect())
    }

    async fn accounts_with_balances(
        &self,
        consent: &BankConsentId,
        psu: &PsuContext,
    ) -> Result<Vec<super::ListedAccount>, BankError> {
        self.account_list(consent, psu, self.config.quirks.with_balance)
            .await
    }

    async fn balances(
        &self,
        consent: &BankConsentId,
        account: &AccountId,
        psu: &PsuContext,
    ) -> Result<Vec<Balance>, BankError> {
        let builder = self.ais_get(
            self.url(&["accounts", account.as_str(), "balances"]),
            consent,
            psu,
        );
        let response: wire::BalancesResponse = self.call(builder).await?;
        response.into_domain()
    }

    async fn transactions(
        &self,
        consent: &BankConsentId,
        account: &AccountId,
        query: &TransactionQuery,
        psu: &PsuContext,
    ) -> Result<Vec<Transaction>, BankError> {
        let mut url = self.url(&["accounts", account.as_str(), "transactions"]);
        {
            let mut pairs = url.query_pairs_mut();
            pairs.append_pair("bookingStatus", query.booking_status.as_str());
            if let Some(from) = query.date_from {
                pairs.append_pair("dateFrom", &from.format("%Y-%m-%d").to_string());
            }
            if let Some(to) = query.date_to {
                pairs.append_pair("dateTo", &to.format("%Y-%m-%d").to_string());
            }
        }
        let mut seen = HashSet::new();
        let first = self.transaction_page(url, consent, psu, &mut seen).await?;
        let mut all = first.transactions;
        let mut next = first
            .next
            .as_deref()
            .map(|href| self.resolve_href(href))
            .transpose()?;
        if self.config.quirks.parallel_pages
            && let (Some(next_url), Some(last)) = (&next, &first.last)
            && let Ok(last_url) = self.resolve_href(last)
            && let Some(urls) = parallel_page_urls(next_url, &last_url)
        {
            if seen.len() + urls.len() > MAX_TRANSACTION_PAGES {
                return Err(BankError::Protocol(format!(
                    "more than {MAX_TRANSACTION_PAGES} transaction pages"
                )));
            }
            for url in &urls {
                if !seen.insert(url.to_string()) {
                    return Err(BankError::Protocol(
                        "transaction pages link in a loop".into(),
                    ));
                }
            }
            // `buffered` keeps the pages in order while up to PARALLEL_PAGES are in flight.
            let pages: Vec<wire::TransactionPage> = futures::stream::iter(urls)
                .map(|url| self.fetch_transaction_page(url, consent, psu))
                .buffered(PARALLEL_PAGES)
                .try_collect()
                .await?;
            next = None;
            for page in pages {
                all.extend(page.transactions);
                // Only the last page's `next` counts: present when the listing grew
                // since the first page; the rest is then followed one page at a time.
                next = page
                    .next
                    .as_deref()
                    .map(|href| self.resolve_href(href))
                    .transpose()?;
            }
        }
        while let Some(page_url) = next.take() {
            let page = self
                .transaction_page(page_url, consent, psu, &mut seen)
                .await?;
            all.extend(page.transactions);
            next = page
                .next
                .as_deref()
                .map(|href| self.resolve_href(href))
                .transpose()?;
        }
        Ok(all)
    }

    async fn initiate_payment(
        &self,
        payment: &PaymentInitiation,
    ) -> Result<PaymentInitiated, BankError> {
        let psu = PsuContext::present(payment.psu_ip);
        let builder = self
            .request(
                Method::POST,
                self.url(&["payments", payment.product.as_str()]),
                CallHeaders {
                    request_id: Some(&payment.request_id),
                    psu: Some(&psu),
                    redirect: Some(&payment.redirect),
                    ..Default::default()
                },
            )
            .json(&wire::PaymentBody::from_initiation(payment));
        let response: wire::PaymentInitiationResponse = self.call(builder).await?;
        response.into_domain(&|href| self.resolve_href(href))
    }

    async fn payment_status(
        &self,
        product: PaymentProduct,
        payment: &BankPaymentId,
    ) -> Result<TransactionStatus, BankError> {
        let builder = self.request(
            Method::GET,
            self.url(&["payments", product.as_str(), payment.as_str(), "status"]),
            CallHeaders::default(),
        );
        let response: wire::PaymentStatusResponse = self.call(builder).await?;
        Ok(wire::transaction_status(&response.transaction_status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bank::registry::BankRegistry;

    fn connector(base: &str) -> BerlinGroupConnector {
        let doc = format!(
            r#"{{"banks":[{{"id":"b","name":"B","country":"LT","baseUrl":"{base}","paymentProducts":["sepa-credit-transfers"]}}]}}"#
        );
        let registry = BankRegistry::from_json(&doc).unwrap();
        BerlinGroupConnector::new(registry.banks()[0].clone()).unwrap()
    }

    fn with_credentials(credentials: &str) -> Result<BerlinGroupConnector, BankError> {
        let doc = format!(
            r#"{{"banks":[{{"id":"b","name":"B","country":"LT","baseUrl":"https://bank.example",
            "paymentProducts":["sepa-credit-transfers"],"credentials":{credentials}}}]}}"#
        );
        let registry = BankRegistry::from_json(&doc).unwrap();
        BerlinGroupConnector::new(registry.banks()[0].clone())
    }

    #[test]
    fn mtls_identity_from_files() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
        with_credentials(&format!(
            r#"{{"certFile":"{dir}/qwac-test.crt","keyFile":"{dir}/qwac-test.key"}}"#
        ))
        .expect("a valid certificate and key build a client");

        let err = with_credentials(&format!(
            r#"{{"certFile":"{dir}/missing.crt","keyFile":"{dir}/qwac-test.key"}}"#
        ))
        .unwrap_err();
        assert!(
            matches!(&err, BankError::Config(m) if m.contains("missing.crt")),
            "{err}"
        );

        // A certificate without its key is not an identity.
        let err = with_credentials(&format!(
            r#"{{"certFile":"{dir}/qwac-test.crt","keyFile":"{dir}/qwac-test.crt"}}"#
        ))
        .unwrap_err();
        assert!(
            matches!(&err, BankError::Config(m) if m.contains("client identity")),
            "{err}"
        );

        let err = with_credentials(
            r#"{"certEnv":"OPENBANK_TEST_UNSET_CERT","keyEnv":"OPENBANK_TEST_UNSET_KEY"}"#,
        )
        .unwrap_err();
        assert!(
            matches!(&err, BankError::Config(m) if m.contains("OPENBANK_TEST_UNSET_CERT")),
            "{err}"
        );
    }

    #[test]
    fn urls_keep_the_base_path_and_encode_segments() {
        let c = connector("https://bank.example/xs2a/berlin/1.3/");
        assert_eq!(
            c.url(&["accounts", "a:b=c", "transactions"]).as_str(),
            "https://bank.example/xs2a/berlin/1.3/v1/accounts/a:b=c/transactions"
        );
        let c = connector("http://127.0.0.1:8080");
        assert_eq!(
            c.url(&["consents"]).as_str(),
            "http://127.0.0.1:8080/v1/consents"
        );
    }

    #[test]
    fn parallel_pages_only_from_consistent_links() {
        let u = |s: &str| Url::parse(s).unwrap();
        let base = "https://bank.example/v1/accounts/x/transactions";
        let urls = parallel_page_urls(
            &u(&format!(
                "{base}?bookingStatus=both&dateFrom=2025-01-01&pageIndex=1"
            )),
            &u(&format!(
                "{base}?bookingStatus=both&dateFrom=2025-01-01&pageIndex=3"
            )),
        )
        .unwrap();
        let shown: Vec<String> = urls.iter().map(Url::to_string).collect();
        assert_eq!(
            shown,
            (1..=3)
                .map(|i| format!("{base}?bookingStatus=both&dateFrom=2025-01-01&pageIndex={i}"))
                .collect::<Vec<_>>()
        );
        // Two pages: `next` is the last one.
        assert_eq!(
            parallel_page_urls(
                &u(&format!("{base}?pageIndex=1")),
                &u(&format!("{base}?pageIndex=1"))
            )
            .unwrap()
            .len(),
            1
        );
        for (next, last) in [
            // next is not page 1 (a cursor, or 1-based paging)
            ("?pageIndex=2", "?pageIndex=5"),
            ("?cursor=abc", "?cursor=xyz"),
            // last differs in more than pageIndex
            (
                "?bookingStatus=both&pageIndex=1",
                "?bookingStatus=booked&pageIndex=4",
            ),
            // no pageIndex on last, or not a number
            ("?pageIndex=1", "?page=4"),
            ("?pageIndex=1", "?pageIndex=four"),
            // ambiguous
            ("?pageIndex=1&pageIndex=1", "?pageIndex=1&pageIndex=4"),
            // absurd
            ("?pageIndex=1", "?pageIndex=100000"),
        ] {
            assert!(
                parallel_page_urls(&u(&format!("{base}{next}")), &u(&format!("{base}{last}")))
                    .is_none(),
                "{next} {last}"
            );
        }
        assert!(
            parallel_page_urls(
                &u(&format!("{base}?pageIndex=1")),
                &u("https://other.example/v1/accounts/x/transactions?pageIndex=3")
            )
            .is_none()
        );
    }

    #[test]
    fn links_resolve_against_the_bank() {
        let c = connector("https://bank.example/xs2a/berlin/1.3");
        let r = |h: &str| c.resolve_href(h).unwrap().to_string();
        assert_eq!(
            r("/v1/accounts/x/transactions?pageIndex=1"),
            "https://bank.example/xs2a/berlin/1.3/v1/accounts/x/transactions?pageIndex=1"
        );
        assert_eq!(
            r("/xs2a/berlin/1.3/v1/accounts/x/transactions?pageIndex=1"),
            "https://bank.example/xs2a/berlin/1.3/v1/accounts/x/transactions?pageIndex=1"
        );
        assert_eq!(
            r("https://sca.bank.example/auth?x=1"),
            "https://sca.bank.example/auth?x=1"
        );
    }
}
