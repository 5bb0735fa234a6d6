"""Quality of the samplers: FID and RMSE to a high-accuracy ODE solution (`quality`), PCA of accurate
trajectories (`pca`), the resumable solver x NFE run behind `amed-deploy eval` (`table`), its markdown
report (`report`) and plots (`plots`, needs the `eval` extra). `inputs` holds the seed protocol all of
them share."""
