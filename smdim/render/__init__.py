"""Pictures of music: piano rolls and contact sheets."""
