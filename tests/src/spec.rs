//! A small OpenAPI 3.0 request validator for the Berlin Group spec: finds the operation
//! of a recorded request, checks required and present parameters (headers, query, path)
//! and validates the JSON body against the operation's schema ($ref, type, enum, pattern,
//! lengths, format, required, properties, additionalProperties, items, oneOf/anyOf/allOf).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

pub struct Spec {
    doc: Value,
}

/// One request as the bank saw it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// Path from `/v1/...` (without the bank's prefix).
    pub path: String,
    pub query: Vec<(String, String)>,
    /// Lowercased names.
    pub headers: BTreeMap<String, String>,
    pub body: Option<Value>,
}

impl Spec {
    pub fn path() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../docs/specs/berlin-group-psd2-api-1.3.11.yaml")
    }

    pub fn load() -> Spec {
        Self::load_from(&Self::path())
    }

    /// Our own public API: docs/openapi.yaml.
    pub fn openapi() -> Spec {
        Self::load_from(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.yaml"))
    }

    pub fn load_from(path: &std::path::Path) -> Spec {
        let text = std::fs::read_to_string(path).expect("spec file");
        let yaml: serde_yaml::Value = serde_yaml::from_str(&text).expect("spec yaml");
        let doc = serde_json::to_value(yaml).expect("spec as json");
        Spec { doc }
    }

    fn resolve<'a>(&'a self, mut v: &'a Value) -> &'a Value {
        while let Some(r) = v.get("$ref").and_then(Value::as_str) {
            let mut cur = &self.doc;
            for part in r.trim_start_matches("#/").split('/') {
                cur = &cur[part.replace("~1", "/").replace("~0", "~")];
            }
            v = cur;
        }
        v
    }

    /// The path template and its parameters matching `path`; literal segments win.
    fn find_operation(
        &self,
        method: &str,
        path: &str,
    ) -> Option<(String, BTreeMap<String, String>, &Value, &Value)> {
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let mut best: Option<(usize, String, BTreeMap<String, String>)> = None;
        for (template, item) in self.doc["paths"].as_object()? {
            if item.get(method.to_lowercase()).is_none() {
                continue;
            }
            let tsegs: Vec<&str> = template.trim_matches('/').split('/').collect();
            if tsegs.len() != segs.len() {
                continue;
            }
            let mut params = BTreeMap::new();
            let mut literals = 0;
            let ok = tsegs.iter().zip(&segs).all(|(t, s)| {
                if t.starts_with('{') {
                    params.insert(
                        t.trim_matches(|c| c == '{' || c == '}').to_owned(),
                        (*s).to_owned(),
                    );
                    true
                } else {
                    literals += 1;
                    t == s
                }
            });
            if ok && best.as_ref().is_none_or(|(l, _, _)| literals > *l) {
                best = Some((literals, template.clone(), params));
            }
        }
        let (_, template, params) = best?;
        let item = &self.doc["paths"][&template];
        Some((template.clone(), params, item, &item[method.to_lowercase()]))
    }

    /// Everything in `request` that the spec does not allow; empty when it conforms.
    pub fn check_request(&self, request: &RecordedRequest) -> Vec<String> {
        let mut problems = Vec::new();
        let Some((template, path_params, item, op)) =
            self.find_operation(&request.method, &request.path)
        else {
            return vec![format!(
                "{} {} is not an operation of the spec",
                request.method, request.path
            )];
        };
        let here = format!("{} {template}", request.method);
        let mut params: Vec<&Value> = Vec::new();
        for list in [item.get("parameters"), op.get("parameters")]
            .into_iter()
            .flatten()
        {
            params.extend(
                list.as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| self.resolve(p)),
            );
        }
        for p in params {
            let name = p["name"].as_str().unwrap_or_default();
            let location = p["in"].as_str().unwrap_or_default();
            let required = p["required"].as_bool().unwrap_or(false);
            let value: Option<String> = match location {
                "header" => request.headers.get(&name.to_lowercase()).cloned(),
                "query" => request
                    .query
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone()),
                "path" => path_params.get(name).cloned(),
                _ => None,
            };
            match value {
                None if required => problems.push(format!(
                    "{here}: required {location} parameter {name} is missing"
                )),
                None => {}
                Some(v) => {
                    if let Some(schema) = p.get("schema") {
                        let as_json = coerce(&v, self.resolve(schema));
                        self.validate(
                            &as_json,
                            schema,
                            &format!("{here} {location} {name}"),
                            &mut problems,
                        );
                    }
                }
            }
        }
        if let Some(rb) = op.get("requestBody") {
            let rb = self.resolve(rb);
            let required = rb["required"].as_bool().unwrap_or(false);
            match (&request.body, rb["content"].get("application/json")) {
                (Some(body), Some(media)) => self.validate(
                    body,
                    &media["schema"],
                    &format!("{here} body"),
                    &mut problems,
                ),
                (Some(_), None) => problems.push(format!("{here}: the spec defines no JSON body")),
                (None, _) if required => {
                    problems.push(format!("{here}: the request body is required"))
                }
                (None, _) => {}
            }
        } else if request.body.is_some() {
            problems.push(format!("{here}: the operation takes no body"));
        }
        problems
    }

    /// Everything in a response to `method path` that the spec does not document: the
    /// status, the content type and (for JSON) the body against the schema. Empty when it
    /// conforms.
    pub fn check_response(
        &self,
        method: &str,
        path: &str,
        status: u16,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Vec<String> {
        let Some((template, _, _, op)) = self.find_operation(method, path) else {
            return vec![format!("{method} {path} is not an operation of the spec")];
        };
        let here = format!("{method} {template} → {status}");
        let responses = &op["responses"];
        let class = format!("{}XX", status / 100);
        let Some(response) = [status.to_string(), class, "default".to_owned()]
            .iter()
            .find_map(|key| responses.get(key.as_str()))
        else {
            return vec![format!("{here}: status not documented")];
        };
        let response = self.resolve(response);
        let Some(content) = response.get("content").and_then(Value::as_object) else {
            return if body.is_empty() {
                vec![]
            } else {
                vec![format!(
                    "{here}: documented without a body, got {} bytes",
                    body.len()
                )]
            };
        };
        let media = content_type
            .and_then(|c| c.split(';').next())
            .map(|c| c.trim().to_ascii_lowercase())
            .unwrap_or_default();
        let Some(documented) = content.get(&media) else {
            let known: Vec<&String> = content.keys().collect();
            return vec![format!(
                "{here}: content type {media:?}, documented {known:?}"
            )];
        };
        let mut problems = Vec::new();
        if media.ends_with("json") {
            match serde_json::from_slice::<Value>(body) {
                Ok(value) => {
                    if let Some(schema) = documented.get("schema") {
                        self.validate(&value, schema, &format!("{here} body"), &mut problems);
                    }
                }
                Err(e) => problems.push(format!("{here}: the body is not JSON ({e})")),
            }
        }
        problems
    }

    fn validate(&self, v: &Value, schema: &Value, at: &str, problems: &mut Vec<String>) {
        let schema = self.resolve(schema);
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            for s in all {
                self.validate(v, s, at, problems);
            }
        }
        for (key, exactly_one) in [("oneOf", true), ("anyOf", false)] {
            if let Some(options) = schema.get(key).and_then(Value::as_array) {
                let matching = options
                    .iter()
                    .filter(|s| {
                        let mut p = Vec::new();
                        self.validate(v, s, at, &mut p);
                        p.is_empty()
                    })
                    .count();
                if matching == 0 || (exactly_one && matching > 1) {
                    problems.push(format!(
                        "{at}: matches {matching} of the {key} alternatives"
                    ));
                }
            }
        }
        if let Some(values) = schema.get("enum").and_then(Value::as_array)
            && !values.contains(v)
        {
            problems.push(format!("{at}: {v} is not one of {values:?}"));
        }
        let ty = schema.get("type").and_then(Value::as_str);
        let type_ok = match ty {
            Some("string") => v.is_string(),
            Some("integer") => v.is_i64() || v.is_u64(),
            Some("number") => v.is_number(),
            Some("boolean") => v.is_boolean(),
            Some("array") => v.is_array(),
            Some("object") => v.is_object(),
            _ => true,
        };
        if !type_ok {
            problems.push(format!("{at}: {v} is not of type {}", ty.unwrap_or("?")));
            return;
        }
        if let Some(s) = v.as_str() {
            let len = s.chars().count() as u64;
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                && len > max
            {
                problems.push(format!("{at}: longer than {max}"));
            }
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                && len < min
            {
                problems.push(format!("{at}: shorter than {min}"));
            }
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
                // Berlin Group patterns describe the whole value; anchor them.
                match regex::Regex::new(&format!("^(?:{pattern})$")) {
                    Ok(re) if !re.is_match(s) => {
                        problems.push(format!("{at}: {s:?} does not match {pattern}"))
                    }
                    _ => {}
                }
            }
            match schema.get("format").and_then(Value::as_str) {
                Some("uuid") if uuid::Uuid::parse_str(s).is_err() => {
                    problems.push(format!("{at}: {s:?} is not a UUID"))
                }
                Some("date") if chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_err() => {
                    problems.push(format!("{at}: {s:?} is not an ISO date"))
                }
                Some("date-time") if chrono::DateTime::parse_from_rfc3339(s).is_err() => {
                    problems.push(format!("{at}: {s:?} is not an RFC 3339 date-time"))
                }
                Some("ipv4") if s.parse::<std::net::Ipv4Addr>().is_err() => {
                    problems.push(format!("{at}: {s:?} is not IPv4"))
                }
                Some("uri") if url::Url::parse(s).is_err() => {
                    problems.push(format!("{at}: {s:?} is not a URI"))
                }
                _ => {}
            }
        }
        if let Some(n) = v.as_i64() {
            if let Some(min) = schema.get("minimum").and_then(Value::as_i64)
                && n < min
            {
                problems.push(format!("{at}: {n} < minimum {min}"));
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_i64)
                && n > max
            {
                problems.push(format!("{at}: {n} > maximum {max}"));
            }
        }
        if let Some(items) = v.as_array() {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    self.validate(item, item_schema, &format!("{at}[{i}]"), problems);
                }
            }
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && items.len() as u64 > max
            {
                problems.push(format!("{at}: more than {max} items"));
            }
        }
        if let Some(obj) = v.as_object() {
            for req in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let name = req.as_str().unwrap_or_default();
                if !obj.contains_key(name) {
                    problems.push(format!("{at}: required property {name} is missing"));
                }
            }
            let props = schema.get("properties").and_then(Value::as_object);
            for (k, child) in obj {
                match props.and_then(|p| p.get(k)) {
                    Some(child_schema) => {
                        self.validate(child, child_schema, &format!("{at}.{k}"), problems)
                    }
                    None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                        problems.push(format!("{at}: property {k} is not allowed"))
                    }
                    None if props.is_some()
                        && schema.get("additionalProperties").is_none()
                        && !has_combinator(schema) =>
                    {
                        // Not forbidden by OpenAPI, but a name the spec does not define is
                        // almost certainly a typo on our side.
                        problems.push(format!("{at}: property {k} is not defined by the spec"))
                    }
                    None => {}
                }
            }
        }
    }
}

fn has_combinator(schema: &Value) -> bool {
    ["allOf", "oneOf", "anyOf"]
        .iter()
        .any(|k| schema.get(*k).is_some())
}

/// Parameters travel as strings; give them the JSON type their schema expects.
fn coerce(raw: &str, schema: &Value) -> Value {
    match schema.get("type").and_then(Value::as_str) {
        Some("integer") => raw
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::from(raw)),
        Some("boolean") => match raw {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::from(raw),
        },
        _ => Value::from(raw),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> RecordedRequest {
        RecordedRequest {
            method: method.into(),
            path: path.into(),
            query: vec![],
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_lowercase(), v.to_string()))
                .collect(),
            body,
        }
    }

    /// The validator itself must catch what it claims to catch.
    #[test]
    fn validator_finds_violations() {
        let spec = Spec::load();
        let id = "99391c7e-ad88-49ec-a2ad-99ddcb1f7721";
        let good_body = serde_json::json!({
            "access": {"allPsd2": "allAccounts"}, "recurringIndicator": true,
            "validUntil": "2026-12-31", "frequencyPerDay": 4, "combinedServiceIndicator": false});
        let ok = req(
            "POST",
            "/v1/consents",
            &[("X-Request-ID", id), ("PSU-IP-Address", "192.0.2.1")],
            Some(good_body.clone()),
        );
        assert_eq!(spec.check_request(&ok), Vec::<String>::new());

        let no_ip = req(
            "POST",
            "/v1/consents",
            &[("X-Request-ID", id)],
            Some(good_body.clone()),
        );
        assert!(
            spec.check_request(&no_ip)
                .iter()
                .any(|p| p.contains("PSU-IP-Address"))
        );

        let bad_uuid = req(
            "POST",
            "/v1/consents",
            &[("X-Request-ID", "nope"), ("PSU-IP-Address", "192.0.2.1")],
            Some(good_body.clone()),
        );
        assert!(
            spec.check_request(&bad_uuid)
                .iter()
                .any(|p| p.contains("UUID"))
        );

        let mut missing = good_body.clone();
        missing.as_object_mut().unwrap().remove("validUntil");
        let r = req(
            "POST",
            "/v1/consents",
            &[("X-Request-ID", id), ("PSU-IP-Address", "192.0.2.1")],
            Some(missing),
        );
        assert!(
            spec.check_request(&r)
                .iter()
                .any(|p| p.contains("validUntil"))
        );

        let mut bad_date = good_body;
        bad_date["validUntil"] = "31.12.2026".into();
        let r = req(
            "POST",
            "/v1/consents",
            &[("X-Request-ID", id), ("PSU-IP-Address", "192.0.2.1")],
            Some(bad_date),
        );
        assert!(
            spec.check_request(&r)
                .iter()
                .any(|p| p.contains("ISO date"))
        );

        let mut tx = req(
            "GET",
            "/v1/accounts/abc/transactions",
            &[("X-Request-ID", id), ("Consent-ID", "c1")],
            None,
        );
        assert!(
            spec.check_request(&tx)
                .iter()
                .any(|p| p.contains("bookingStatus"))
        );
        tx.query.push(("bookingStatus".into(), "sometimes".into()));
        assert!(!spec.check_request(&tx).is_empty());
        tx.query[0].1 = "booked".into();
        assert_eq!(spec.check_request(&tx), Vec::<String>::new());

        let pay = serde_json::json!({"debtorAccount": {"iban": "LT121000011101001000"},
            "instructedAmount": {"currency": "EUR", "amount": "12.3456"},
            "creditorAccount": {"iban": "LT601010012345678901"}, "creditorName": "X"});
        let r = req(
            "POST",
            "/v1/payments/sepa-credit-transfers",
            &[("X-Request-ID", id), ("PSU-IP-Address", "192.0.2.1")],
            Some(pay),
        );
        assert!(
            !spec.check_request(&r).is_empty(),
            "4 decimals must not pass the amount pattern"
        );

        let status = req(
            "GET",
            "/v1/consents/abc/status",
            &[("X-Request-ID", id)],
            None,
        );
        assert_eq!(spec.check_request(&status), Vec::<String>::new());
    }
}
