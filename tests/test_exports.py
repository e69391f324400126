import gigi_crdt


def test_all_names_are_exported_and_exist() -> None:
    public = {name for name in dir(gigi_crdt) if not name.startswith("_")}
    modules = {
        "cli",
        "discovery",
        "errors",
        "identity",
        "model",
        "node",
        "protocol",
        "relay",
        "replica",
        "signatures",
        "store",
        "sync",
        "testing",
        "transport",
    }
    assert public - modules == set(gigi_crdt.__all__)
    for name in gigi_crdt.__all__:
        assert getattr(gigi_crdt, name) is not None


def test_errors_share_one_root() -> None:
    for name in gigi_crdt.__all__:
        value = getattr(gigi_crdt, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, gigi_crdt.GigiError)
