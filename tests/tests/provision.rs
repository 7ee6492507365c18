//! Provisions the real template.yaml into local AWS (moto_server on 127.0.0.1:4566, or
//! whatever AWS_ENDPOINT_URL points at) under a unique stack name, checks what was created
//! with the AWS SDK, re-provisions (idempotent) and tears down.
//!
//! Needs local AWS: `bash scripts/python-env.sh && bash scripts/local-aws.sh start`.

use std::collections::{BTreeSet, HashMap};

use anyhow::{Context, anyhow, ensure};
use aws_config::SdkConfig;
use aws_sdk_dynamodb::types::{
    BillingMode, KeyType, ProjectionType, ScalarAttributeType, TimeToLiveStatus,
};
use aws_sdk_sqs::types::QueueAttributeName;
use infra::provision::{Provisioned, provision, teardown, template_path};
use infra::template::Template;

#[tokio::test]
async fn provisions_template_into_local_aws_idempotently() {
    let sdk = integration_tests::aws_config().await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    if let Err(e) = dynamodb.list_tables().limit(1).send().await {
        panic!(
            "local AWS does not answer at {}: {}\n\
             start it with: bash scripts/python-env.sh && bash scripts/local-aws.sh start",
            std::env::var("AWS_ENDPOINT_URL")
                .unwrap_or_else(|_| "http://127.0.0.1:4566".to_owned()),
            aws_sdk_dynamodb::error::DisplayErrorContext(&e)
        );
    }

    let template = Template::load(template_path()).expect("template.yaml loads");
    let stack = format!("it-{}", uuid::Uuid::new_v4().simple());

    let first = provision(&sdk, &template, &stack)
        .await
        .expect("first provision");
    // Check (and re-provision) before tearing down, whatever the outcome.
    let checked = check(&sdk, &template, &stack, &first).await;
    let torn_down = teardown(&sdk, &first).await;
    let gone = match &torn_down {
        Ok(()) => check_gone(&sdk, &first).await,
        Err(_) => Ok(()),
    };

    checked.expect("provisioned resources match template.yaml");
    torn_down.expect("teardown");
    gone.expect("teardown removed everything");
}

async fn check(
    sdk: &SdkConfig,
    template: &Template,
    stack: &str,
    provisioned: &Provisioned,
) -> anyhow::Result<()> {
    ensure!(provisioned.stack_name == stack);
    let table_ids: BTreeSet<_> = provisioned.tables.keys().map(String::as_str).collect();
    ensure!(
        table_ids
            == BTreeSet::from([
                "BankDataTable",
                "ConsentsTable",
                "NotificationsTable",
                "PaymentsTable"
            ]),
        "tables: {table_ids:?}"
    );
    let queue_ids: BTreeSet<_> = provisioned.queues.keys().map(String::as_str).collect();
    ensure!(
        queue_ids
            == BTreeSet::from([
                "BulkPaymentDLQ",
                "BulkPaymentQueue",
                "PaymentStatusDLQ",
                "PaymentStatusQueue",
                "WebhookDLQ",
                "WebhookQueue"
            ]),
        "queues: {queue_ids:?}"
    );
    ensure!(provisioned.table("ConsentsTable") == format!("{stack}-consents"));
    ensure!(provisioned.table("PaymentsTable") == format!("{stack}-payments"));
    ensure!(provisioned.table("NotificationsTable") == format!("{stack}-notifications"));
    ensure!(provisioned.table("BankDataTable") == format!("{stack}-bank-data"));
    check_table(sdk, provisioned.table("BankDataTable"), &[]).await?;

    check_table(sdk, provisioned.table("ConsentsTable"), CONSENT_INDEXES).await?;
    check_table(
        sdk,
        provisioned.table("PaymentsTable"),
        &[("ByGsi1", "gsi1pk", "gsi1sk")],
    )
    .await?;
    check_table(
        sdk,
        provisioned.table("NotificationsTable"),
        &[("ByPendingWebhook", "gsi1pk", "gsi1sk")],
    )
    .await?;

    check_source_queue(
        sdk,
        provisioned,
        "PaymentStatusQueue",
        "PaymentStatusDLQ",
        "180",
    )
    .await?;
    check_source_queue(
        sdk,
        provisioned,
        "BulkPaymentQueue",
        "BulkPaymentDLQ",
        "360",
    )
    .await?;
    check_dlq(sdk, provisioned, "PaymentStatusDLQ").await?;
    check_dlq(sdk, provisioned, "BulkPaymentDLQ").await?;
    check_source_queue(sdk, provisioned, "WebhookQueue", "WebhookDLQ", "180").await?;
    check_dlq(sdk, provisioned, "WebhookDLQ").await?;

    // Re-running finds everything and changes nothing.
    let again = provision(sdk, template, stack)
        .await
        .context("second provision")?;
    ensure!(
        &again == provisioned,
        "re-provision differs:\n{again:#?}\nvs\n{provisioned:#?}"
    );
    check_table(sdk, again.table("ConsentsTable"), CONSENT_INDEXES).await?;
    check_source_queue(sdk, &again, "PaymentStatusQueue", "PaymentStatusDLQ", "180").await?;
    Ok(())
}

/// The consents table's indexes: name, hash key, range key.
const CONSENT_INDEXES: &[(&str, &str, &str)] = &[
    ("ByValidUntil", "gsi1pk", "gsi1sk"),
    ("ByHealthHour", "gsi2pk", "gsi2sk"),
];

async fn check_table(
    sdk: &SdkConfig,
    name: &str,
    indexes: &[(&str, &str, &str)],
) -> anyhow::Result<()> {
    let client = aws_sdk_dynamodb::Client::new(sdk);
    let described = client
        .describe_table()
        .table_name(name)
        .send()
        .await
        .with_context(|| format!("DescribeTable {name}"))?;
    let table = described
        .table()
        .ok_or_else(|| anyhow!("{name}: no description"))?;

    let keys: Vec<_> = table
        .key_schema()
        .iter()
        .map(|k| (k.attribute_name(), k.key_type().clone()))
        .collect();
    ensure!(
        keys == [("pk", KeyType::Hash), ("sk", KeyType::Range)],
        "{name}: key schema {keys:?}"
    );

    let attributes: HashMap<_, _> = table
        .attribute_definitions()
        .iter()
        .map(|a| (a.attribute_name(), a.attribute_type().clone()))
        .collect();
    let index_keys = indexes.iter().flat_map(|(_, hash, range)| [*hash, *range]);
    for attribute in ["pk", "sk"].into_iter().chain(index_keys) {
        ensure!(
            attributes.get(attribute) == Some(&ScalarAttributeType::S),
            "{name}: attribute {attribute} is not S: {attributes:?}"
        );
    }

    let billing = table.billing_mode_summary().and_then(|b| b.billing_mode());
    ensure!(
        billing == Some(&BillingMode::PayPerRequest),
        "{name}: billing {billing:?}"
    );

    let gsis = table.global_secondary_indexes();
    ensure!(gsis.len() == indexes.len(), "{name}: GSIs {gsis:?}");
    for (gsi_name, hash, range) in indexes {
        let gsi = gsis
            .iter()
            .find(|g| g.index_name() == Some(*gsi_name))
            .ok_or_else(|| anyhow!("{name}: no GSI {gsi_name}: {gsis:?}"))?;
        let gsi_keys: Vec<_> = gsi
            .key_schema()
            .iter()
            .map(|k| (k.attribute_name(), k.key_type().clone()))
            .collect();
        ensure!(
            gsi_keys == [(*hash, KeyType::Hash), (*range, KeyType::Range)],
            "{name}: GSI {gsi_name} key schema {gsi_keys:?}"
        );
        let projection = gsi.projection().and_then(|p| p.projection_type());
        ensure!(
            projection == Some(&ProjectionType::All),
            "{name}: GSI {gsi_name} projection {projection:?}"
        );
    }

    let ttl = client
        .describe_time_to_live()
        .table_name(name)
        .send()
        .await
        .with_context(|| format!("DescribeTimeToLive {name}"))?;
    let ttl = ttl
        .time_to_live_description()
        .ok_or_else(|| anyhow!("{name}: no TTL description"))?;
    ensure!(
        ttl.time_to_live_status() == Some(&TimeToLiveStatus::Enabled)
            && ttl.attribute_name() == Some("expiresAt"),
        "{name}: TTL {ttl:?}"
    );
    Ok(())
}

async fn queue_attributes(
    sdk: &SdkConfig,
    url: &str,
) -> anyhow::Result<HashMap<QueueAttributeName, String>> {
    let out = aws_sdk_sqs::Client::new(sdk)
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .with_context(|| format!("GetQueueAttributes {url}"))?;
    Ok(out.attributes().cloned().unwrap_or_default())
}

async fn check_source_queue(
    sdk: &SdkConfig,
    provisioned: &Provisioned,
    queue_id: &str,
    dlq_id: &str,
    visibility_timeout: &str,
) -> anyhow::Result<()> {
    let queue = provisioned.queue(queue_id);
    let attributes = queue_attributes(sdk, &queue.url).await?;
    let get = |name: QueueAttributeName| attributes.get(&name).map(String::as_str);

    ensure!(
        get(QueueAttributeName::QueueArn) == Some(queue.arn.as_str()),
        "{queue_id}: arn"
    );
    ensure!(
        get(QueueAttributeName::VisibilityTimeout) == Some(visibility_timeout),
        "{queue_id}: {attributes:?}"
    );
    ensure!(
        get(QueueAttributeName::MessageRetentionPeriod) == Some("345600"),
        "{queue_id}: {attributes:?}"
    );

    let policy = get(QueueAttributeName::RedrivePolicy)
        .ok_or_else(|| anyhow!("{queue_id}: no RedrivePolicy: {attributes:?}"))?;
    let policy: serde_json::Value =
        serde_json::from_str(policy).with_context(|| format!("{queue_id}: {policy}"))?;
    ensure!(
        policy["deadLetterTargetArn"].as_str() == Some(provisioned.queue(dlq_id).arn.as_str()),
        "{queue_id}: redrive target {policy}"
    );
    // SQS renders maxReceiveCount as a number or as a string, depending on how it was set.
    let max_receive_count = match &policy["maxReceiveCount"] {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    };
    // At least 5 (the webhook queue allows 10 attempts of its own backoff).
    ensure!(
        max_receive_count.is_some_and(|n| n >= 5),
        "{queue_id}: maxReceiveCount {policy}"
    );
    Ok(())
}

async fn check_dlq(sdk: &SdkConfig, provisioned: &Provisioned, dlq_id: &str) -> anyhow::Result<()> {
    let attributes = queue_attributes(sdk, provisioned.queue_url(dlq_id)).await?;
    ensure!(
        attributes
            .get(&QueueAttributeName::MessageRetentionPeriod)
            .map(String::as_str)
            == Some("1209600"),
        "{dlq_id}: {attributes:?}"
    );
    ensure!(
        !attributes.contains_key(&QueueAttributeName::RedrivePolicy),
        "{dlq_id}: a DLQ has no redrive policy: {attributes:?}"
    );
    Ok(())
}

async fn check_gone(sdk: &SdkConfig, provisioned: &Provisioned) -> anyhow::Result<()> {
    let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
    for name in provisioned.tables.values() {
        match dynamodb.describe_table().table_name(name).send().await {
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) => {}
            // Real DynamoDB deletes asynchronously.
            Ok(out)
                if out.table().and_then(|t| t.table_status())
                    == Some(&aws_sdk_dynamodb::types::TableStatus::Deleting) => {}
            other => return Err(anyhow!("table {name} still there: {other:?}")),
        }
    }
    let sqs = aws_sdk_sqs::Client::new(sdk);
    for queue in provisioned.queues.values() {
        let name = queue.url.rsplit('/').next().unwrap_or_default();
        match sqs.get_queue_url().queue_name(name).send().await {
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_queue_does_not_exist()) => {}
            other => return Err(anyhow!("queue {name} still there: {other:?}")),
        }
    }
    Ok(())
}
