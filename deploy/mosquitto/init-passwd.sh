#!/bin/sh
# One-shot (docker-compose): put the collection service's MQTT user into the service listener's password file,
# and make sure the device listener's file exists (devices are added to it later). The password comes from the
# environment, never from a file in the repository.
set -eu
: "${MQTT_COLLECTION_PASSWORD:?set MQTT_COLLECTION_PASSWORD}"
auth=/mosquitto/auth
umask 077
[ -f "$auth/passwd" ] || : > "$auth/passwd"
[ -f "$auth/services.passwd" ] || : > "$auth/services.passwd"
mosquitto_passwd -b "$auth/services.passwd" collection "$MQTT_COLLECTION_PASSWORD"
# A service account on the device listener would let a device guess it there: an older layout kept it in passwd.
mosquitto_passwd -D "$auth/passwd" collection 2>/dev/null || true
# The broker (and `docker compose exec -u mosquitto ...` when adding devices) rewrites the files as user mosquitto.
chown -R mosquitto:mosquitto "$auth"
chmod 0700 "$auth"
chmod 0600 "$auth/passwd" "$auth/services.passwd"
echo "mosquitto password files ready: $(cut -d: -f1 "$auth/passwd" | wc -l) device(s), $(cut -d: -f1 "$auth/services.passwd" | wc -l) service account(s)"
