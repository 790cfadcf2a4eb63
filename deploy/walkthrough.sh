#!/usr/bin/env bash
# The README's partner change walkthrough, end to end, against a running server:
# support sets up two partners, a client and its WABA; the client previews and
# submits a move to a partner that approves by hand, scheduled a few seconds
# ahead (a quiet hour, in real life); that partner lists its incoming requests
# and approves; the request waits for its time, then the migration completes;
# the history is shown.
# Every call carries one W3C traceparent, so with tracing on the whole
# walkthrough is one trace (its ID is printed at the end).
#
#   deploy/walkthrough.sh            # against `cargo run -p partnerhub -- serve` on localhost:50051
#   CLUSTER=target/cluster/cluster.json deploy/walkthrough.sh   # against deploy/cluster.sh
#
# Environment: ADDR (host:port of every service), or ACCOUNT_ADDR and
# PARTNER_CHANGE_ADDR; CLUSTER (a cluster.json: the addresses and config come
# from it); GRPCURL (the grpcurl command); PARTNERHUB (the partnerhub command,
# run with the server's configuration to mint tokens).
set -euo pipefail

ADDR=${ADDR:-localhost:50051}
GRPCURL=${GRPCURL:-grpcurl}
PARTNERHUB=${PARTNERHUB:-cargo run -q -p partnerhub --}
if [ -n "${CLUSTER:-}" ]; then
  # The first replica of each service, and the cluster's config for tokens.
  member() { python3 -c 'import json,sys; m=json.load(open(sys.argv[1]))
print(next(x["url"] for x in m["members"] if x["service"] == sys.argv[2]).removeprefix("http://"))' "$CLUSTER" "$1"; }
  ACCOUNT_ADDR=$(member account)
  PARTNER_CHANGE_ADDR=$(member partner-change)
  CONFIG=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["config"])' "$CLUSTER")
  PARTNERHUB="$PARTNERHUB --config $CONFIG"
fi
ACCOUNT_ADDR=${ACCOUNT_ADDR:-$ADDR}
PARTNER_CHANGE_ADDR=${PARTNER_CHANGE_ADDR:-$ADDR}
TRACE_ID=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
TRACEPARENT="00-$TRACE_ID-$(python3 -c 'import secrets; print(secrets.token_hex(8))')-01"

token() { $PARTNERHUB token --subject "$1" --ttl 10m; }
# call SUBJECT METHOD JSON: one RPC as SUBJECT, printing the JSON reply.
call() {
  local addr=$PARTNER_CHANGE_ADDR
  case "$2" in account.*) addr=$ACCOUNT_ADDR ;; esac
  "$GRPCURL" -plaintext -H "authorization: Bearer $(token "$1")" -H "traceparent: $TRACEPARENT" \
    -d "$3" "$addr" "partnerhub.$2"
}
# field JSON PATH...: one value out of a JSON reply.
field() { python3 -c 'import json,sys; v=json.loads(sys.argv[1])
for k in sys.argv[2:]: v=v[int(k)] if k.isdigit() else v.get(k, "")
print(v)' "$@"; }
say() { printf '\n== %s\n' "$*"; }

say "Support creates two partners, a client with its company info and a card, and a WABA with two numbers"
SETTINGS='"accepting_changes": true, "terms_version": "2026-01"'
SOURCE=$(field "$(call support:walkthrough account.v1.AccountService/CreatePartner \
  "{\"display_name\": \"Old BSP\", \"payment_processor\": \"PAYMENT_PROCESSOR_STRIPE\", \"settings\": {$SETTINGS}}")" partner partnerId)
DESTINATION=$(field "$(call support:walkthrough account.v1.AccountService/CreatePartner \
  "{\"display_name\": \"New BSP\", \"payment_processor\": \"PAYMENT_PROCESSOR_STRIPE\", \"settings\": {$SETTINGS, \"auto_approve\": false}}")" partner partnerId)
CLIENT=$(field "$(call support:walkthrough account.v1.AccountService/CreateClient \
  '{"display_name": "Bakery Ltd", "payment_processor": "PAYMENT_PROCESSOR_STRIPE"}')" client clientId)
call "client:$CLIENT" account.v1.AccountService/UpdateCompanyInfo "{\"client_id\": \"$CLIENT\", \"company_info\": {
  \"legal_name\": \"Bakery Ltd\", \"address_line\": \"1 Flour St\", \"city\": \"Leeds\",
  \"postal_code\": \"LS1 1AA\", \"country_code\": \"GB\", \"tax_id\": \"GB123456789\"}}" > /dev/null
call "client:$CLIENT" account.v1.AccountService/AddPaymentMethod \
  "{\"client_id\": \"$CLIENT\", \"type\": \"PAYMENT_METHOD_TYPE_CARD\", \"last4\": \"4242\"}" > /dev/null
WABA=$(field "$(call support:walkthrough account.v1.AccountService/CreateWaba \
  "{\"client_id\": \"$CLIENT\", \"partner_id\": \"$SOURCE\", \"display_name\": \"Main line\"}")" waba wabaId)
SUFFIX=$(printf '%08d' $((RANDOM * RANDOM % 100000000)))
for number in "+4915$SUFFIX" "+4916$SUFFIX"; do
  call support:walkthrough account.v1.AccountService/AddPhoneNumber "{\"waba_id\": \"$WABA\", \"phone_number\": \"$number\"}" > /dev/null
done
echo "source $SOURCE, destination $DESTINATION, client $CLIENT, WABA $WABA"

say "The client previews the move: the numbers that move, the terms to accept, and no blockers"
call "client:$CLIENT" partnerchange.v1.PartnerChangeService/PreviewPartnerChange \
  "{\"waba_id\": \"$WABA\", \"destination_partner_id\": \"$DESTINATION\"}"

say "The client submits it, accepting the destination's terms, to move no earlier than in 5 seconds"
MIGRATE_AFTER=$(python3 -c 'import datetime as d; print((d.datetime.now(d.timezone.utc) + d.timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%SZ"))')
SUBMITTED=$(call "client:$CLIENT" partnerchange.v1.PartnerChangeService/SubmitPartnerChange \
  "{\"request_id\": \"walkthrough-$SUFFIX\", \"waba_id\": \"$WABA\", \"destination_partner_id\": \"$DESTINATION\", \"accepted_terms_version\": \"2026-01\", \"migrate_after\": \"$MIGRATE_AFTER\"}")
echo "$SUBMITTED"
CHANGE=$(field "$SUBMITTED" partnerChange partnerChangeId)

say "The destination partner lists its incoming pending requests, and approves"
call "partner:$DESTINATION" partnerchange.v1.PartnerChangeService/ListPartnerChanges \
  '{"direction": "DIRECTION_INCOMING", "states": ["PARTNER_CHANGE_STATE_PENDING_APPROVAL"]}'
call "partner:$DESTINATION" partnerchange.v1.PartnerChangeService/ApprovePartnerChange \
  "{\"partner_change_id\": \"$CHANGE\"}" > /dev/null

say "Approved, it waits for its time: what moves in the next hour"
HOUR_AHEAD=$(python3 -c 'import datetime as d; print((d.datetime.now(d.timezone.utc) + d.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"))')
SCHEDULED=$(call "partner:$DESTINATION" partnerchange.v1.PartnerChangeService/ListPartnerChanges \
  "{\"direction\": \"DIRECTION_INCOMING\", \"scheduled_before\": \"$HOUR_AHEAD\"}")
echo "scheduled: $(field "$SCHEDULED" partnerChanges 0 partnerChangeId) $(field "$SCHEDULED" partnerChanges 0 state) after $(field "$SCHEDULED" partnerChanges 0 migrateAfter)"

say "At its time, the migration worker moves the WABA and every number"
for _ in $(seq 1 200); do
  STATE=$(field "$(call "client:$CLIENT" partnerchange.v1.PartnerChangeService/GetPartnerChange \
    "{\"partner_change_id\": \"$CHANGE\"}")" partnerChange state)
  [ "$STATE" = PARTNER_CHANGE_STATE_COMPLETED ] && break
  [ "$STATE" = PARTNER_CHANGE_STATE_FAILED ] && { echo "the partner change failed" >&2; exit 1; }
  sleep 0.1
done
echo "state: $STATE"
[ "$STATE" = PARTNER_CHANGE_STATE_COMPLETED ] || { echo "the partner change did not complete" >&2; exit 1; }
call "partner:$DESTINATION" account.v1.AccountService/GetWaba "{\"waba_id\": \"$WABA\"}"

say "Its history: who did what, when"
call "client:$CLIENT" partnerchange.v1.PartnerChangeService/GetPartnerChangeHistory "{\"partner_change_id\": \"$CHANGE\"}"

say "Done. With tracing on, the whole walkthrough is trace $TRACE_ID"
