"""Small pieces every minicloud process shares (logging set-up, the status table)."""
