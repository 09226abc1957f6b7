"""The in-guest agent: runs inside guests on a stock Python 3, standard library only."""
