"""Network architectures, one per file; each is selected by a `conf/model/<name>.yaml`."""
