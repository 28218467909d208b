#!/bin/sh
# One-shot (docker-compose): put the collection service's MQTT user into the broker's password file, keeping
# every device already in it. The password comes from the environment, never from a file in the repository.
set -eu
: "${MQTT_COLLECTION_PASSWORD:?set MQTT_COLLECTION_PASSWORD}"
passwd=/mosquitto/auth/passwd
umask 077
[ -f "$passwd" ] || : > "$passwd"
mosquitto_passwd -b "$passwd" collection "$MQTT_COLLECTION_PASSWORD"
# The broker (and `docker compose exec -u mosquitto ...` when adding devices) rewrites the file as user mosquitto.
chown -R mosquitto:mosquitto /mosquitto/auth
chmod 0700 /mosquitto/auth
chmod 0600 "$passwd"
echo "mosquitto password file ready: $(cut -d: -f1 "$passwd" | wc -l) user(s)"
