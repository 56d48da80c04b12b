"""The training engine: building objects from the config (`build`), checking the config
(`config`), the one loop for every task (`loop`) and its epoch callbacks, resuming, schedules,
provenance and the data check before training; `training.train` runs an experiment end to end."""
