#!/bin/sh
# One-shot topic creation for docker-compose (the broker has auto-create off): reads topics.txt beside this file.
# Idempotent: an existing topic is left as it is (change its retention with kafka-configs.sh --alter).
set -eu
bootstrap="${KAFKA_BOOTSTRAP:-kafka:9092}"
replication="${TOPIC_REPLICATION_FACTOR:-1}"
bin=/opt/kafka/bin
grep -v '^[[:space:]]*#' "$(dirname "$0")/topics.txt" | while read -r name partitions retention_ms cleanup_policy; do
  [ -n "$name" ] || continue
  "$bin/kafka-topics.sh" --bootstrap-server "$bootstrap" --create --if-not-exists --topic "$name" \
    --partitions "$partitions" --replication-factor "$replication" \
    --config "retention.ms=$retention_ms" --config "cleanup.policy=$cleanup_policy"
done
"$bin/kafka-topics.sh" --bootstrap-server "$bootstrap" --list
