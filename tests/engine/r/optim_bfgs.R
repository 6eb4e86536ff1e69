# R's own vmmin, through optim(method = "BFGS"), on the 1-H-1 logistic network: the reference the
# native BFGS kernel is tested against (tests/engine/test_second_order_ref.py).
#
# Usage: Rscript optim_bfgs.R DATA.csv JOBS.txt OUT.csv
# DATA.csv: columns x, y (the training points, already scaled). JOBS.txt: one fit per line,
# space-separated: hidden maxit abstol reltol, then the start in the project's layout
# [w1 (H) | b1 (H) | w2 (H) | b2]. OUT.csv: value, fncount, grcount, convergence, par (the final
# parameters, space-separated, 17 digits). fn is the sum of squared errors, gr its gradient, both
# written here in plain R: an implementation independent of the project's.
args <- commandArgs(trailingOnly = TRUE)
if (length(args) != 3) {
  cat("usage: Rscript optim_bfgs.R DATA.csv JOBS.txt OUT.csv\n", file = stderr())
  quit(status = 2)
}
d <- read.csv(args[1])
x <- d$x
t <- d$y
fmt <- function(v) paste(formatC(v, digits = 17, format = "g"), collapse = " ")
rows <- list()
for (line in readLines(args[2])) {
  v <- as.numeric(strsplit(trimws(line), " +")[[1]])
  H <- v[1]; maxit <- v[2]; abstol <- v[3]; reltol <- v[4]; p0 <- v[-(1:4)]
  stopifnot(length(p0) == 3 * H + 1)
  parts <- function(p) list(w1 = p[1:H], b1 = p[H + 1:H], w2 = p[2 * H + 1:H], b2 = p[3 * H + 1])
  fwd <- function(p) {
    q <- parts(p)
    A <- 1 / (1 + exp(-(outer(q$w1, x) + q$b1)))  # H x N
    list(q = q, A = A, r = drop(crossprod(q$w2, A)) + q$b2 - t)
  }
  fn <- function(p) sum(fwd(p)$r^2)
  gr <- function(p) {
    f <- fwd(p)
    g <- 2 * f$r
    dz <- f$q$w2 * f$A * (1 - f$A) * rep(g, each = H)  # H x N
    c(drop(dz %*% x), rowSums(dz), drop(f$A %*% g), sum(g))
  }
  fit <- optim(p0, fn, gr, method = "BFGS", control = list(maxit = maxit, abstol = abstol, reltol = reltol))
  rows[[length(rows) + 1]] <- data.frame(value = formatC(fit$value, digits = 17, format = "g"),
    fncount = fit$counts[["function"]], grcount = fit$counts[["gradient"]],
    convergence = fit$convergence, par = fmt(fit$par), stringsAsFactors = FALSE)
}
write.csv(do.call(rbind, rows), args[3], row.names = FALSE)
