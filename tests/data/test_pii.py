from codegemma.data.pii import EMAIL_PLACEHOLDER, IPV4_PLACEHOLDERS, KEY_PLACEHOLDER, redact


def test_emails_ips_and_keys_are_replaced_and_counted():
    text = ('owner = "john.doe@corp.io"\nHOST = "34.117.59.81"\nV6 = "2001:4860:4860::8888"\n'
            'aws = "AKIAIOSFODNN7EXAMPLE"\ngh = "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"\n')
    out, counts = redact(text)
    assert EMAIL_PLACEHOLDER in out and "john.doe" not in out
    assert "34.117.59.81" not in out and any(ip in out for ip in IPV4_PLACEHOLDERS)
    assert "2001:4860" not in out
    assert out.count(KEY_PLACEHOLDER) == 2
    assert counts == {"email": 1, "ipv4": 1, "ipv6": 1, "secret": 2}


def test_exclusions_keep_versions_dates_private_and_code():
    text = ('VERSION = "1.2.3.4"\nlocal = "127.0.0.1"\nlan = "192.168.1.20"\ndoc = "203.0.113.5"\n'
            'when = "01.02.2023"\nstd::vector<int> a::b;\nTABLE = "0123456789ABCDEFGHIJKLMNOPQRSTUV"\n'
            'sha = "d41d8cd98f00b204e9800998ecf8427e"  # md5 of empty\n')
    out, counts = redact(text)
    assert out == text and not counts


def test_version_like_address_near_dns_is_redacted():
    out, counts = redact('dns_server = "1.2.3.4"\n')
    assert counts["ipv4"] == 1 and "1.2.3.4" not in out


def test_same_address_same_placeholder():
    out, _ = redact("a = '9.9.9.9'\nb = '9.9.9.9'\n")
    first, second = [line.split("'")[1] for line in out.splitlines()]
    assert first == second
