#!/bin/sh
# Install the agents named in $1 (comma-separated: aider, codex, claude-code) into the image.
# Versions are pinned: a preset's command line and output parsing are tested against them.
set -eu
AIDER_VERSION=0.86.2
CODEX_VERSION=0.171.0
CLAUDE_CODE_VERSION=2.0.77
ca=/usr/local/share/nightcrew/ca.crt
# The host's bundle where it has one (a re-signing proxy), else the image's own.
[ -s "$ca" ] && cat "$ca" >>/etc/ssl/certs/ca-certificates.crt
export PIP_CERT=/etc/ssl/certs/ca-certificates.crt NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_DEFAULT_TIMEOUT=180
agents=$(echo "$1" | tr ',' ' ')
node=0
for agent in $agents; do
    case "$agent" in
        aider) ;;
        codex | claude-code) node=1 ;;
        *) echo "install-agents.sh: unknown agent $agent" >&2; exit 2 ;;
    esac
done
if [ "$node" = 1 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
    rm -rf /var/lib/apt/lists/*
    npm config set --global cafile /etc/ssl/certs/ca-certificates.crt
    npm config set --global fund false
    npm config set --global audit false
    npm config set --global update-notifier false
fi
for agent in $agents; do
    case "$agent" in
        aider)
            python3 -m venv /opt/aider
            /opt/aider/bin/pip install -q "aider-chat==$AIDER_VERSION"
            ln -sf /opt/aider/bin/aider /usr/local/bin/aider
            ;;
        codex) npm install -g --silent "@openai/codex@$CODEX_VERSION" ;;
        claude-code) npm install -g --silent "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION" ;;
    esac
done
rm -rf /root/.npm /root/.cache
# The agents find the bundle at run time too (nightcrew's proxy does not re-sign, but a
# company proxy behind it may).
echo "$agents" >/usr/local/share/nightcrew/agents
