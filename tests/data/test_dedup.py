import numpy as np

from codegemma.data.dedup import DedupConfig, Item, content_hash, deduplicate, minhash, repository_item, shingles

BASE = "\n".join(f"def function_{i}(alpha, beta):\n    return alpha * {i} + beta - {i * 3}" for i in range(40))


def item(name, text, **kw):
    return Item(name, content_hash(text), minhash(text), size=len(text), name=(name,), **kw)


def test_shingles_and_short_texts():
    assert shingles("a b c d e f") == [b"a b c d e", b"b c d e f"]
    assert minhash("only three tokens") is None


def test_exact_and_near_duplicates_with_survivor_priority():
    near = BASE.replace("function_7(", "fn_7(")  # shorter: the original has more content and survives
    items = [item("b.py", BASE), item("a.py", BASE), item("c.py", near), item("z.py", "def other():\n    pass\n" * 3)]
    result = deduplicate(items, DedupConfig())
    # exact copies: the lexicographically first name survives when nothing else differs
    assert result.dropped["b.py"] == ("exact_duplicate", "a.py")
    assert result.dropped["c.py"] == ("near_duplicate", "a.py")
    assert "z.py" not in result.dropped and "a.py" not in result.dropped
    assert result.clusters == [["a.py", "c.py"]]


def test_license_then_stars_decide_the_survivor():
    a = item("a.py", BASE, license="GPL-3.0", stars=100)
    b = item("b.py", BASE, license="MIT", stars=1)
    c = item("c.py", BASE, license="MIT", stars=5)
    assert deduplicate([a, b, c], DedupConfig()).dropped == {"a.py": ("exact_duplicate", "c.py"),
                                                           "b.py": ("exact_duplicate", "c.py")}


def test_repository_signature_is_minhash_of_union():
    x, y = minhash(BASE[:800]), minhash(BASE[800:])
    repo = repository_item("r", [("x.py", "h1", x), ("y.py", "h2", y)], None, 0, 0, 10, ("r",))
    assert np.array_equal(repo.signature, np.minimum(x, y))
    same = repository_item("s", [("y.py", "h2", y), ("x.py", "h1", x)], None, 0, 0, 10, ("s",))
    assert repo.exact == same.exact


def test_threshold_separates_dissimilar_texts():
    other = "\n".join(f"class Widget{i}:\n    size = {i}\n    color = 'blue{i}'" for i in range(40))
    result = deduplicate([item("a.py", BASE), item("b.py", other)], DedupConfig())
    assert not result.dropped
