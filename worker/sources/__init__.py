"""Change sources: each an adapter that yields ``ChangeEvent``s (see ``base.ChangeSource``)."""
