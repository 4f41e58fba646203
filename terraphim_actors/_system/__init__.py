"""Layer 6: the composition root: MessageSystem builds every part and hands each its
collaborators."""
