//! Topic provisioning through the admin client.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use crate::config::KafkaConfig;
use crate::error::SetupError;

/// Creates each of `topics` that does not exist yet, with `partitions` partitions and
/// `replication` replicas. A topic that already exists counts as success.
///
/// Use it where the brokers do not create topics on first use (many production clusters, and the
/// tansu broker used in this project's end-to-end tests).
///
/// # Errors
/// [`SetupError::Client`] for a bad configuration, [`SetupError::Admin`] when the request fails,
/// [`SetupError::CreateTopic`] when the broker refuses a topic.
pub async fn provision_topics(
    config: &KafkaConfig,
    topics: &[&str],
    partitions: i32,
    replication: i32,
) -> Result<(), SetupError> {
    if topics.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = config
        .to_client_config()
        .create()
        .map_err(SetupError::Client)?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(replication)))
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(30)))
        .request_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(&new, &options)
        .await
        .map_err(SetupError::Admin)?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(topic, partitions, "topic created"),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic, "topic already exists");
            }
            Err((topic, code)) => return Err(SetupError::CreateTopic { topic, code }),
        }
    }
    Ok(())
}
