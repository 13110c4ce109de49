#!/usr/bin/env bash
# The main job: rewrite the bundled face model with the bundled request.
source "$(dirname "$0")/common.inc"
require_model
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
REQUEST="$ROOT/requests/dcgan-sunglasses.json"

"$RANKONE" edit --request "$REQUEST" --out "$WORK/patch.safetensors" --stats-samples 300 --json \
  > "$WORK/edit.json" 2>/dev/null || fail "edit"
for field in layer rank solver steps seconds goal_loss_initial goal_loss_final; do
  grep -q "\"$field\"" "$WORK/edit.json" || fail "edit --json lacks $field: $(cat "$WORK/edit.json")"
done
"$RANKONE" compare --patch "$WORK/patch.safetensors" --samples 0-7 --out "$WORK/compare.png" 2>/dev/null \
  || fail "compare"
[ -s "$WORK/compare.png" ] || fail "compare wrote nothing"
"$RANKONE" sample --patch "$WORK/patch.safetensors" --seeds 0-3 --out "$WORK/edited.png" 2>/dev/null \
  || fail "sample --patch"
"$RANKONE" apply --patch "$WORK/patch.safetensors" --out "$WORK/edited.safetensors" 2>/dev/null || fail "apply"
[ -s "$WORK/edited.json" ] || fail "apply wrote no card"
"$RANKONE" sample --model "$WORK/edited.json" --seeds 0-3 --out "$WORK/edited2.png" 2>/dev/null \
  || fail "sample from the applied card"
cmp -s "$WORK/edited.png" "$WORK/edited2.png" || fail "applied model differs from sample --patch"

# Bad requests write nothing.
expect_error "unknown layer 9" edit --request "$REQUEST" --layer 9 --out "$WORK/bad.safetensors"
expect_error "rank 40 is larger" edit --request "$REQUEST" --layer 4 --rank 40 --out "$WORK/bad.safetensors" --stats-samples 50
sed 's#"data:image/png;base64,iVBOR#"data:image/png;base64,%%%#' "$REQUEST" > "$WORK/broken.json"
expect_error "invalid base64" edit --request "$WORK/broken.json" --out "$WORK/bad.safetensors"
printf '{"paste": [1, "x"]' > "$WORK/truncated.json"
expect_error "invalid JSON" edit --request "$WORK/truncated.json" --out "$WORK/bad.safetensors"
URL="$(grep -o '"data:image/png;base64,[^"]*"' "$REQUEST" | head -1)"
printf '{"object": [-3, %s], "paste": [0, %s]}' "$URL" "$URL" > "$WORK/negative.json"
expect_error "image number -3 is negative" edit --request "$WORK/negative.json" --out "$WORK/bad.safetensors"
printf '{"object": [4294967296, %s], "paste": [0, %s], "layer": 3}' "$URL" "$URL" > "$WORK/huge.json"
expect_error "out of range" edit --request "$WORK/huge.json" --out "$WORK/bad.safetensors" --stats-samples 50
# Out-of-range options are rejected, not replaced by the request's values.
expect_error "--rank 0 is out of range 1 to 64" edit --request "$REQUEST" --rank 0 --out "$WORK/bad.safetensors"
expect_error "--rank 65 is out of range" edit --request "$REQUEST" --rank 65 --out "$WORK/bad.safetensors"
expect_error "--layer -5 is invalid" edit --request "$REQUEST" --layer -5 --out "$WORK/bad.safetensors"
expect_error "steps 0 out of range" edit --request "$REQUEST" --steps 0 --out "$WORK/bad.safetensors"
expect_error "learning rate nan" edit --request "$REQUEST" --lr nan --out "$WORK/bad.safetensors"
expect_error "learning rate -1" edit --request "$REQUEST" --lr -1 --out "$WORK/bad.safetensors"
expect_error "piter 0 must be at least 1" edit --request "$REQUEST" --piter 0 --out "$WORK/bad.safetensors"
sed 's#"rank": 1,#"rank": 1.5,#' "$REQUEST" > "$WORK/fractional.json"
grep -q '"rank": 1.5' "$WORK/fractional.json" || fail "the bundled request has no '\"rank\": 1,' to change"
expect_error "field 'rank' must be a whole number" edit --request "$WORK/fractional.json" --out "$WORK/bad.safetensors"
expect_error "must end in .safetensors" edit --request "$REQUEST" --out "$WORK/bad.png"
[ -e "$WORK/bad.png" ] && fail "an edit with a .png name wrote a file"
mkdir "$WORK/folder.safetensors"
expect_error "is a folder" edit --request "$REQUEST" --out "$WORK/folder.safetensors" --stats-samples 50
[ -e "$WORK/bad.safetensors" ] && fail "a failed edit left a patch file"
echo "cli edit: ok"
