// The query page's entry: a small client-side router over the pages.
import './style.css';
import { renderConfig, renderSlow, renderStatus, renderTsdb } from './pages';
import { renderQueryPage } from './query';

const app = document.getElementById('app')!;
let cleanup: (() => void) | null = null;

function navigate(url: string, replace = false): void {
  if (url === location.pathname + location.search) return;
  if (replace) history.replaceState(null, '', url);
  else {
    history.pushState(null, '', url);
    render();
  }
}

function render(): void {
  cleanup?.();
  cleanup = null;
  const path = location.pathname;
  for (const a of document.querySelectorAll<HTMLAnchorElement>('header nav a')) {
    a.classList.toggle('active', a.pathname === path || (path === '/' && a.pathname === '/graph'));
  }
  switch (path) {
    case '/status':
      renderStatus(app);
      break;
    case '/config':
      renderConfig(app);
      break;
    case '/tsdb':
      renderTsdb(app);
      break;
    case '/slow':
      renderSlow(app);
      break;
    default:
      cleanup = renderQueryPage(app, navigate);
  }
}

// Links marked data-nav change the view without reloading the page.
document.addEventListener('click', (e) => {
  const a = (e.target as Element).closest?.('a[data-nav]') as HTMLAnchorElement | null;
  if (!a || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  e.preventDefault();
  navigate(a.pathname + a.search);
});
window.addEventListener('popstate', render);
render();
