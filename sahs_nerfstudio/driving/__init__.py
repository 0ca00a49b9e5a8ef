"""Driving a trained avatar: what drives it (``sequence``: driving files, recordings, eye tracks, the checks against
a model) and a face video as a driver (``video``: the driver tracked with the preprocessing's face mesh, its
expressions moved into the subject's basis, its head turns). Used at render time by ``sahs-render`` and the viewer;
``process/`` is preprocessing only."""
