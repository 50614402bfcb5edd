//! Naming rules: topic names (Kafka's), pipeline and plugin names.

/// Kafka's rules for topic names, so topics move between the embedded log
/// and a broker unchanged.
///
/// # Errors
/// A message naming the topic and the rule it breaks.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 249 {
        return Err(format!(
            "topic name {name:?} must be 1 to 249 characters long"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("topic name {name:?} is not allowed"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "topic name {name:?} may hold only ASCII letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// Names of pipelines and plugins: letters, digits, `.`, `_`, `-`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::validate_topic_name;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("async-process-execution").is_ok());
        assert!(validate_topic_name("orders.created.v1").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name("a b").is_err());
        assert!(validate_topic_name(&"x".repeat(250)).is_err());
    }
}
