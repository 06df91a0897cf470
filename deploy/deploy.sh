#!/usr/bin/env bash
# Deploy albert-spp to a VM over SSH: the GitLab pipeline's deploy jobs (.gitlab-ci.yml) run it.
#
#   deploy/deploy.sh ENV_FILE
#
# ENV_FILE: the deployment's env file (the CI's file variable STAGING__ENV_FILE or PROD__ENV_FILE), shaped like
# .env.example; it names the VM (CI_DEPLOY_HOST) and the deployment (ENV: staging or prod).
#
# From the environment (GitLab CI/CD variables):
#   CI_DEPLOY_USER, CI_DEPLOY_USER_SSH_PRIVATE_KEY   the account on the VM and its private key
#   CI_REGISTRY_IMAGE, CI_API_IMAGE_TAG               the images to run: <registry image>/{api,worker}:<tag>
#   CI_DEPLOY_GROUP_USER, CI_DEPLOY_GROUP_TOKEN       the VM's login to the registry (the token goes on stdin)
#   API_KEYS                                          path of the API keys file (a file variable)
#   CI_VLLM_IMAGE_TAG                                 optional: vllm/vllm-openai's TAG@sha256:DIGEST (compose's pin else)
#   CI_DEPLOY_KNOWN_HOSTS                             optional: the VM's host key line(s); else trusted on first use
#   CI_DEPLOY_PORT (22), CI_DEPLOY_DIR (albert-spp-<ENV>, under the account's home), HEALTH_TIMEOUT (600 s)
#
# On the VM: the directory gets docker-compose.yml, `.env` (the env file, plus the image names, the keys file and
# the account's uid for the containers) and `api_keys.json`, both mode 0600; then `docker login`, `docker compose
# pull` and `up --wait` under the project albert-spp-<ENV> with the gpu profile (the simulator never serves a
# staging or prod deployment), and GET /health of the API until it answers 200. Any step failing fails the job,
# with the containers' state and the API's last log lines.
set -euo pipefail

die() {
    echo "deploy: $*" >&2
    exit 1
}

[ $# -eq 1 ] || die "usage: deploy/deploy.sh ENV_FILE"
env_file=$1
[ -r "$env_file" ] || die "cannot read the env file $env_file"
for name in CI_DEPLOY_USER CI_DEPLOY_USER_SSH_PRIVATE_KEY CI_REGISTRY_IMAGE CI_API_IMAGE_TAG \
    CI_DEPLOY_GROUP_USER CI_DEPLOY_GROUP_TOKEN API_KEYS; do
    [ -n "${!name:-}" ] || die "$name is not set (a CI/CD variable of the project)"
done
[ -r "$API_KEYS" ] || die "cannot read the API keys file API_KEYS=$API_KEYS"
case "${CI_VLLM_IMAGE_TAG:-}" in
"" | *@sha256:*) ;;
*) die "CI_VLLM_IMAGE_TAG=$CI_VLLM_IMAGE_TAG is a tag alone: give TAG@sha256:DIGEST, the image's digest" ;;
esac

# The value of a variable of the env file (its last definition; quotes around it removed), without sourcing it.
setting() {
    sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*//p" "$env_file" | tail -n 1 | sed -e 's/^"\(.*\)"$/\1/' \
        -e "s/^'\(.*\)'\$/\1/"
}

deployment=$(setting ENV)
host=$(setting CI_DEPLOY_HOST)
api_port=$(setting API_PORT)
case "$(setting API_BIND_ADDRESS)" in
"" | 0.0.0.0 | "::") api_host=127.0.0.1 ;;
*) api_host=$(setting API_BIND_ADDRESS) ;;
esac
case "$deployment" in
staging | prod) ;;
*) die "ENV=${deployment:-(unset)} in $env_file: a deployment is staging or prod" ;;
esac
[ -n "$host" ] || die "CI_DEPLOY_HOST is not set in $env_file (the VM's address)"
[[ "$api_port" =~ ^[0-9]+$ ]] || die "API_PORT=${api_port:-(unset)} in $env_file is not a port"
case ",$(setting COMPOSE_PROFILES)," in
*,sim,*) die "COMPOSE_PROFILES in $env_file names sim: a $deployment deployment runs vLLM (profile gpu)" ;;
esac

project="albert-spp-$deployment"
remote_dir=${CI_DEPLOY_DIR:-$project}
health_timeout=${HEALTH_TIMEOUT:-600}
registry=${CI_REGISTRY_IMAGE%%/*}
here=$(cd "$(dirname "$0")/.." && pwd)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umask 077
printf '%s\n' "$CI_DEPLOY_USER_SSH_PRIVATE_KEY" | tr -d '\r' >"$work/key"
if [ -n "${CI_DEPLOY_KNOWN_HOSTS:-}" ]; then
    printf '%s\n' "$CI_DEPLOY_KNOWN_HOSTS" >"$work/known_hosts"
    checking=yes
else
    echo "deploy: CI_DEPLOY_KNOWN_HOSTS is not set: the host key of $host is trusted on first use" >&2
    : >"$work/known_hosts"
    checking=accept-new
fi
ssh_options=(-i "$work/key" -p "${CI_DEPLOY_PORT:-22}" -o BatchMode=yes -o IdentitiesOnly=yes
    -o StrictHostKeyChecking="$checking" -o UserKnownHostsFile="$work/known_hosts" -o ConnectTimeout=20)

on_vm() {
    # The remote commands are built here, their values quoted with printf %q: expanding them here is the point.
    # shellcheck disable=SC2029
    ssh "${ssh_options[@]}" "$CI_DEPLOY_USER@$host" "$@"
}

quoted_dir=$(printf '%q' "$remote_dir")

# The env file as compose reads it on the VM: the deployment's own, then what this pipeline decides (later
# definitions win in an env file).
{
    grep -v -E '^[[:space:]]*(CI_REGISTRY_IMAGE|CI_API_IMAGE_TAG|CI_VLLM_IMAGE_TAG|API_KEYS_HOST_FILE|COMPOSE_PROFILES|APP_UID|APP_GID)[[:space:]]*=' "$env_file" || true
    echo
    echo "# ---- set by deploy/deploy.sh"
    echo "CI_REGISTRY_IMAGE=$CI_REGISTRY_IMAGE"
    echo "CI_API_IMAGE_TAG=$CI_API_IMAGE_TAG"
    if [ -n "${CI_VLLM_IMAGE_TAG:-}" ]; then echo "CI_VLLM_IMAGE_TAG=$CI_VLLM_IMAGE_TAG"; fi
    echo "API_KEYS_HOST_FILE=./api_keys.json"
    echo "COMPOSE_PROFILES=gpu"
} >"$work/env"

echo "deploy: $project ($CI_REGISTRY_IMAGE/{api,worker}:$CI_API_IMAGE_TAG) to $CI_DEPLOY_USER@$host:$remote_dir"
on_vm "umask 077 && mkdir -p $quoted_dir"
on_vm "cat > $quoted_dir/docker-compose.yml" <"$here/docker-compose.yml"
# The containers run as the account (APP_UID, APP_GID), so that they read the 0600 keys file it owns.
on_vm "umask 077 && { cat; echo \"APP_UID=\$(id -u)\"; echo \"APP_GID=\$(id -g)\"; } > $quoted_dir/.env.tmp \
    && chmod 600 $quoted_dir/.env.tmp && mv $quoted_dir/.env.tmp $quoted_dir/.env" <"$work/env"
on_vm "umask 077 && cat > $quoted_dir/api_keys.json.tmp && chmod 600 $quoted_dir/api_keys.json.tmp \
    && mv $quoted_dir/api_keys.json.tmp $quoted_dir/api_keys.json" <"$API_KEYS"

printf '%s' "$CI_DEPLOY_GROUP_TOKEN" | on_vm "docker login --username $(printf '%q' "$CI_DEPLOY_GROUP_USER") \
    --password-stdin $(printf '%q' "$registry")" >/dev/null || die "docker login to $registry failed on $host"

compose="cd $quoted_dir && docker compose --project-name $project --env-file .env --profile gpu"
on_vm "$compose pull" || die "docker compose pull failed on $host"
if ! on_vm "$compose up --detach --remove-orphans --wait --wait-timeout $health_timeout"; then
    on_vm "$compose ps; $compose logs --tail 50 api" >&2 || true
    die "the services of $project did not all become healthy on $host"
fi

# The API as its clients see it: GET /health on the VM's API_BIND_ADDRESS:API_PORT, until it answers 200 or HEALTH_TIMEOUT passes.
if ! on_vm "deadline=\$((\$(date +%s) + $health_timeout)); \
    until curl --silent --fail --max-time 5 --output /dev/null http://$api_host:$api_port/health; do \
        [ \$(date +%s) -lt \$deadline ] || exit 1; sleep 2; done"; then
    on_vm "$compose ps; $compose logs --tail 50 api" >&2 || true
    die "GET /health of the API on $host:$api_port did not answer 200 within ${health_timeout}s"
fi
echo "deploy: $project is up on $host: GET /health answers 200"
