"""PII redaction: email addresses, public IP addresses and secrets, replaced by placeholders.

Emails and IPs are found by regular expressions with the exclusions of the BigCode PII pipeline
(spec data-pipeline §3.4): an IP candidate must contain a digit, must not look like a date, must not
be version-like (four single digits, "1.2.3.4") unless "dns" or "server" occurs within 100
characters, and must parse with `ipaddress`. Only addresses that identify a host on the internet
are redacted: private, loopback, link-local, multicast and documentation ranges say nothing about a
person. Secrets come from `detect-secrets` plugins (keyword, basic-auth and private-key plugins left
out, as BigCode does, since they fire on ordinary code), with hash-like values on lines that talk
about hashes suppressed.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections import Counter
from functools import lru_cache

EMAIL_PLACEHOLDER = "<EMAIL>"
KEY_PLACEHOLDER = "<KEY>"
IPV4_PLACEHOLDERS = ("10.0.0.1", "10.0.1.2", "172.16.0.3", "192.168.0.4", "192.168.1.5")
IPV6_PLACEHOLDERS = ("fd00::1", "fd00::2", "fd00::3", "fd00::4", "fd00::5")

EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
                   r"[A-Za-z]{2,24}(?![\w-])")
IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
DATE_LIKE = re.compile(r"^(?:\d{1,2}\.\d{1,2}\.\d{2,4}|\d{4}\.\d{1,2}\.\d{1,2}|0\d\.)")
HASH_WORDS = re.compile(r"sha|md5|hash|byte", re.IGNORECASE)
SECRET_PLUGINS = (
    ("artifactory", "ArtifactoryDetector", {}), ("aws", "AWSKeyDetector", {}),
    ("azure_storage_key", "AzureStorageKeyDetector", {}), ("cloudant", "CloudantDetector", {}),
    ("discord", "DiscordBotTokenDetector", {}), ("github_token", "GitHubTokenDetector", {}),
    ("gitlab_token", "GitLabTokenDetector", {}), ("ibm_cloud_iam", "IbmCloudIamDetector", {}),
    ("ibm_cos_hmac", "IbmCosHmacDetector", {}), ("jwt", "JwtTokenDetector", {}),
    ("mailchimp", "MailchimpDetector", {}), ("npm", "NpmDetector", {}), ("openai", "OpenAIDetector", {}),
    ("pypi_token", "PypiTokenDetector", {}), ("sendgrid", "SendGridDetector", {}), ("slack", "SlackDetector", {}),
    ("softlayer", "SoftlayerDetector", {}), ("square_oauth", "SquareOAuthDetector", {}),
    ("stripe", "StripeDetector", {}), ("telegram_token", "TelegramBotTokenDetector", {}),
    ("twilio", "TwilioKeyDetector", {}),
    ("high_entropy_strings", "Base64HighEntropyString", {"limit": 4.5}),
    ("high_entropy_strings", "HexHighEntropyString", {"limit": 3.0}),
)


def _pick(options: tuple[str, ...], original: str) -> str:
    # the same address always maps to the same placeholder, so code that compares addresses stays consistent
    return options[int(hashlib.md5(original.encode()).hexdigest(), 16) % len(options)]


def _context(text: str, start: int, end: int) -> str:
    return text[max(0, start - 100): end + 100].lower()


def _is_personal_ip(candidate: str, text: str, start: int, end: int) -> bool:
    if not any(c.isdigit() for c in candidate):
        return False
    try:
        ip = ipaddress.ip_address(candidate)
    except ValueError:
        return False
    if ip.version == 4:
        if DATE_LIKE.match(candidate):
            return False
        context = _context(text, start, end)
        if len(candidate) == 7 and "dns" not in context and "server" not in context:
            return False  # "1.2.3.4" is far more often a version than an address
    else:
        if sum(bool(group) for group in candidate.split(":")) < 3:
            return False  # C++ scopes ("a::b") and prefix tables ("200::") parse as IPv6 but are not hosts
    return ip.is_global and not ip.is_multicast


@lru_cache(maxsize=1)
def _secret_plugins():
    import importlib

    plugins = []
    for module, cls, kwargs in SECRET_PLUGINS:
        try:
            plugin_cls = getattr(importlib.import_module(f"detect_secrets.plugins.{module}"), cls)
        except (ImportError, AttributeError):
            continue  # plugin absent from this detect-secrets version
        plugins.append(plugin_cls(**kwargs))
    return plugins


def _looks_like_hash(value: str, line: str) -> bool:
    return len(value) in (32, 40, 64) and bool(HASH_WORDS.search(line))


def _is_alphabet(value: str) -> bool:
    """Character tables ("abcdef...", "0123456789ABCDEF") have high entropy but are not secrets."""
    run = 1
    for a, b in zip(value, value[1:]):
        run = run + 1 if ord(b) == ord(a) + 1 else 1
        if run >= 6:
            return True
    return False


def find_secrets(text: str, path: str = "file") -> list[str]:
    """Secret values detect-secrets reports in `text` (hash-like values on hash lines suppressed)."""
    found: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if len(line) < 16:
            continue  # no plugin reports a secret this short
        for plugin in _secret_plugins():
            for secret in plugin.analyze_line(filename=path, line=line, line_number=number):
                value = secret.secret_value
                if (value and len(value) >= 8 and not _looks_like_hash(value, line) and not _is_alphabet(value)
                        and value not in found):
                    found.append(value)
    return found


def redact(text: str, path: str = "file") -> tuple[str, Counter]:
    """`text` with emails, public IPs and secrets replaced; counts per kind."""
    counts: Counter = Counter()
    for value in sorted(find_secrets(text, path), key=len, reverse=True):
        n = text.count(value)
        if n:
            text = text.replace(value, KEY_PLACEHOLDER)
            counts["secret"] += n

    def email(match: re.Match) -> str:
        counts["email"] += 1
        return EMAIL_PLACEHOLDER

    text = EMAIL.sub(email, text)

    def ip(match: re.Match, version: int) -> str:
        value = match.group(0)
        if not _is_personal_ip(value, match.string, match.start(), match.end()):
            return value
        counts[f"ipv{version}"] += 1
        return _pick(IPV4_PLACEHOLDERS if version == 4 else IPV6_PLACEHOLDERS, value)

    text = IPV4.sub(lambda m: ip(m, 4), text)
    text = IPV6.sub(lambda m: ip(m, 6), text)
    return text, counts
