"""What the tests share: data paths, launchers, the tiny trainer, log-prob checks, scripts run under torchrun."""
