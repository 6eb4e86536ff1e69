# R's own nnet on given data sets and seeds: the reference that sweeps.nnet_reference drives.
#
# Usage: Rscript nnet_reference.R JOBS.csv OUT.csv
# JOBS.csv has one row per fit: data (a name), train (CSV with columns x, y), test (CSV with
# columns x, y: the grid the test MSE is taken on), seed, size, maxit, abstol, reltol, and wts
# (initial weights in nnet's order, space-separated, or empty for nnet's own U(-0.7, 0.7) drawn
# after set.seed(seed)). OUT.csv gets one row per fit: data, seed, test_mse, train_mse, seconds
# (the nnet() call alone; cpu_seconds: its user + system CPU time), iterations (nnet's last reported iteration: it reports every 10th, and
# maxit when it stops there), convergence (nnet's: 0 converged, 1 maxit reached), value (the
# fitted criterion, the sum of squared errors), wts (the fitted weights, space-separated).
suppressPackageStartupMessages(ok <- requireNamespace("nnet", quietly = TRUE))
if (!ok) {
  cat("R package nnet is not installed\n", file = stderr())
  quit(status = 3)
}
args <- commandArgs(trailingOnly = TRUE)
if (length(args) != 2) {
  cat("usage: Rscript nnet_reference.R JOBS.csv OUT.csv\n", file = stderr())
  quit(status = 2)
}
jobs <- read.csv(args[1], stringsAsFactors = FALSE, colClasses = c(wts = "character"))
cache <- list()
load_xy <- function(path) {
  if (is.null(cache[[path]])) cache[[path]] <<- read.csv(path)
  cache[[path]]
}
fmt <- function(v) paste(formatC(v, digits = 17, format = "g"), collapse = " ")
rows <- vector("list", nrow(jobs))
for (i in seq_len(nrow(jobs))) {
  j <- jobs[i, ]
  train <- load_xy(j$train)
  test <- load_xy(j$test)
  set.seed(j$seed)
  args_nnet <- list(x = train$x, y = train$y, size = j$size, maxit = j$maxit, linout = TRUE,
                    abstol = j$abstol, reltol = j$reltol, trace = TRUE)
  if (!is.na(j$wts) && nzchar(j$wts)) args_nnet$Wts <- as.numeric(strsplit(j$wts, " ")[[1]])
  t0 <- proc.time()
  trace <- capture.output(nn <- do.call(nnet::nnet, args_nnet))
  dt <- proc.time() - t0
  seconds <- dt[["elapsed"]]
  cpu_seconds <- dt[["user.self"]] + dt[["sys.self"]]
  reported <- grep("^iter", trace, value = TRUE)
  iterations <- if (nn$convergence == 1) j$maxit else if (length(reported))
    as.integer(sub("^iter *([0-9]+).*", "\\1", tail(reported, 1))) else 0L
  pred <- predict(nn, data.frame(x = test$x))
  rows[[i]] <- data.frame(
    data = j$data, seed = j$seed,
    test_mse = mean((pred - test$y)^2),
    train_mse = mean((nn$fitted.values - train$y)^2),
    seconds = seconds, cpu_seconds = cpu_seconds, iterations = iterations, convergence = nn$convergence,
    value = nn$value, wts = fmt(nn$wts), stringsAsFactors = FALSE)
}
out <- do.call(rbind, rows)
write.csv(out, args[2], row.names = FALSE)
